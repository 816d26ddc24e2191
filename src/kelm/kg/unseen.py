"""Held-out triples that name an entity or relation absent from train ("unseen").

Every public copy of WN18RR and FB15k-237 has such valid/test triples. Two conventions exist:
LibKGE keeps them (every entity of every split is in the vocabulary, every test triple is
ranked) and also reports the ``without_unseen`` subset; PyKEEN drops them and says how many.
`drop_unseen` is the second; `seen_mask` marks the triples of the first subset.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch

from kelm.kg.io.folder import unseen_problem
from kelm.kg.io.report import ReadReport
from kelm.kg.model import KnowledgeGraph, Triple

#: ``keep`` (LibKGE): rank every held-out triple, report ``without_unseen`` beside; ``drop`` (PyKEEN).
UnseenPolicy = Literal["keep", "drop"]
UNSEEN_POLICIES = ("keep", "drop")


def _vocabulary(triples: Iterable[Triple]) -> tuple[set[str], set[str]]:
    entities: set[str] = set()
    relations: set[str] = set()
    for t in triples:
        entities.add(t.head)
        entities.add(t.tail)
        relations.add(t.relation)
    return entities, relations


def is_unseen(triple: Triple, entities: set[str], relations: set[str]) -> bool:
    """Whether ``triple`` names an entity or a relation outside ``entities`` / ``relations``."""
    return unseen_problem(triple, entities, relations) is not None


def count_unseen(kg: KnowledgeGraph, splits: Iterable[str], train_split: str = "train") -> dict[str, int]:
    """Per split of ``splits`` present in ``kg``: how many triples are unseen in ``train_split``."""
    entities, relations = _vocabulary(kg.triples(train_split))
    return {s: sum(is_unseen(t, entities, relations) for t in kg.splits[s]) for s in splits if s in kg.splits}


def drop_unseen(kg: KnowledgeGraph, splits: Iterable[str], train_split: str = "train") -> dict[str, int]:
    """Remove the unseen triples of ``splits`` from ``kg`` in place; return how many per split.

    Entities and relations named only by dropped triples leave the vocabulary (as with PyKEEN,
    whose vocabulary is that of train); those that were in no triple to begin with stay.
    """
    entities, relations = _vocabulary(kg.triples(train_split))
    dropped: dict[str, int] = {}
    gone: list[Triple] = []
    for s in splits:
        if s not in kg.splits:
            continue
        flags = [is_unseen(t, entities, relations) for t in kg.splits[s]]
        gone += [t for t, out in zip(kg.splits[s], flags, strict=True) if out]
        kg.splits[s] = [t for t, out in zip(kg.splits[s], flags, strict=True) if not out]
        dropped[s] = sum(flags)
    if gone:
        still_e, still_r = _vocabulary(kg.triples())
        for t in gone:
            for eid in (t.head, t.tail):
                if eid not in still_e:
                    kg.entities.pop(eid, None)
            if t.relation not in still_r:
                kg.relations.pop(t.relation, None)
    return dropped


def seen_mask(train_N3: torch.Tensor, triples_N3: torch.Tensor, num_entities: int, num_relations: int) -> torch.Tensor:
    """``(n,)`` bool: True where head, relation and tail of ``triples_N3`` all occur in ``train_N3``."""
    entities = torch.zeros(num_entities, dtype=torch.bool, device=triples_N3.device)
    relations = torch.zeros(num_relations, dtype=torch.bool, device=triples_N3.device)
    train = train_N3.to(triples_N3.device)
    entities[train[:, 0]] = True
    entities[train[:, 2]] = True
    relations[train[:, 1]] = True
    h, r, t = triples_N3.long().unbind(1)
    return entities[h] & entities[t] & relations[r]


def apply_unseen_policy(
    kg: KnowledgeGraph,
    policy: str,
    train_split: str,
    held_out: Sequence[str],
    report: ReadReport | None = None,
) -> dict[str, Any]:
    """Apply ``policy`` (``keep``, or ``drop`` in place) to the ``held_out`` splits of ``kg`` and
    describe it for metrics.json: the policy, and per held-out split its triples, how many are
    unseen and how many were dropped; with a read report, the skipped lines and duplicates too."""
    dropped = drop_unseen(kg, held_out, train_split) if policy == "drop" else {}
    unseen = count_unseen(kg, held_out, train_split)
    info: dict[str, Any] = {"policy": policy}
    for s in held_out:
        if s in kg.splits:
            info[s] = {"triples": len(kg.splits[s]), "unseen": unseen.get(s, 0), "dropped": dropped.get(s, 0)}
    if report is not None:
        info["skipped_lines"] = report.total_skipped
        info["duplicates"] = report.total_duplicates
    return info


def describe_unseen(info: dict[str, Any]) -> str | None:
    """One line on what `apply_unseen_policy` met, or None when nothing was unseen, dropped or skipped."""
    parts = []
    for split, c in info.items():
        if isinstance(c, dict) and c.get("dropped"):
            parts.append(f"{c['dropped']} {split} triples dropped (entity or relation not in train)")
        elif isinstance(c, dict) and c.get("unseen"):
            parts.append(f"{c['unseen']} of {c['triples']} {split} triples name an entity or relation not in train")
    if info.get("skipped_lines"):
        parts.append(f"{info['skipped_lines']} bad lines skipped")
    if info.get("duplicates"):
        parts.append(f"{info['duplicates']} duplicate lines stored once")
    return "; ".join(parts) or None


__all__ = [
    "UNSEEN_POLICIES",
    "UnseenPolicy",
    "apply_unseen_policy",
    "count_unseen",
    "describe_unseen",
    "drop_unseen",
    "is_unseen",
    "seen_mask",
]
