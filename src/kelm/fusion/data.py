"""``umls-groups``: a sentence classification set generated from UMLS, where the graph helps.

Each sentence states one UMLS fact in words, ``"<X> <relation> <Y>."`` (relation names from
``relation2text.txt``; the ``isa`` relation is never used, so no sentence names a class), and its
label is the **semantic group of Y**: the first of `GROUPS` that is Y itself or one of Y's ``isa``
ancestors in the graph (UMLS ``isa`` facts are transitively closed; entities above every group,
such as ``entity`` or ``event``, are not used as Y). The split is by Y: every sentence about a
given Y lies in one of train / dev / test (70 / 15 / 15 % of the Ys), so a test label cannot be
learnt from training sentences about the same entity; it has to come from what the model knows
about Y's name, or from Y's neighbourhood in the graph (its ``isa`` facts above all).

Sentences per Y are capped (``per_entity``), drawn with ``seed``; the files are ordinary
``id<TAB>text<TAB>label`` classification files.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from kelm.atomic import write_text_atomic
from kelm.kg.model import KnowledgeGraph
from kelm.linking.domains import GROUPS, semantic_group

NAME = "umls-groups"
#: Semantic groups, most specific first where they nest.
SPLIT_SHARES = {"train": 0.7, "dev": 0.15, "test": 0.15}


def generate_groups(kg: KnowledgeGraph, seed: int = 0, per_entity: int = 40) -> dict[str, list[tuple[str, str, str]]]:
    """``(id, text, label)`` rows per split (train, dev, test)."""
    ancestors: dict[str, set[str]] = defaultdict(set)
    facts = sorted({t.key() for t in kg.triples()})
    for h, r, t in facts:
        if r == "isa":
            ancestors[h].add(t)
    by_tail: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for h, r, t in facts:
        if r != "isa" and h != t:
            by_tail[t].append((h, r, t))
    tails = sorted(t for t in by_tail if semantic_group(t, ancestors) is not None and t not in GROUPS)
    rng = random.Random(seed)
    # split the Ys of each group separately, so every group occurs in every split
    grouped: dict[str, list[str]] = defaultdict(list)
    for t in tails:
        grouped[semantic_group(t, ancestors) or ""].append(t)
    split_of: dict[str, str] = {}
    for members in grouped.values():
        rng.shuffle(members)
        n_test = max(1, round(len(members) * SPLIT_SHARES["test"])) if len(members) >= 3 else 0
        n_dev = max(1, round(len(members) * SPLIT_SHARES["dev"])) if len(members) >= 3 else 0
        for i, t in enumerate(members):
            split_of[t] = "test" if i < n_test else "dev" if i < n_test + n_dev else "train"
    rows: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLIT_SHARES}
    for t in tails:
        chosen = by_tail[t] if len(by_tail[t]) <= per_entity else rng.sample(by_tail[t], per_entity)
        label = semantic_group(t, ancestors) or ""
        for h, r, _ in sorted(chosen):
            text = f"{_name(kg, h).capitalize()} {_rel(kg, r)} {_name(kg, t)}."
            split = split_of[t]
            rows[split].append((f"{split}-{len(rows[split])}", text, label))
    for split in rows:
        rng.shuffle(rows[split])
    return rows


def _name(kg: KnowledgeGraph, entity: str) -> str:
    return kg.entities[entity].label or entity.replace("_", " ")


def _rel(kg: KnowledgeGraph, relation: str) -> str:
    return kg.relations[relation].label or relation.replace("_", " ")


def write_groups(folder: str | Path, kg: KnowledgeGraph, seed: int = 0, per_entity: int = 40) -> Path:
    """Write ``train.tsv``, ``dev.tsv`` and ``test.tsv`` (with a header line) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, items in generate_groups(kg, seed, per_entity).items():
        lines = ["id\ttext\tlabel"] + [f"{i}\t{text}\t{label}" for i, text, label in items]
        write_text_atomic(folder / f"{split}.tsv", "\n".join(lines) + "\n")
    return folder


__all__ = ["GROUPS", "NAME", "generate_groups", "semantic_group", "write_groups"]
