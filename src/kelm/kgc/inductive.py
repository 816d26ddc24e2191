"""Inductive splits: entities held out of training, to be predicted from their text alone.

`inductive_split(kg, fraction, seed)` works on the graph's entity vocabulary (``kg.entities``,
sorted by id). Exactly ``round(fraction · #entities)`` of them (at least one when
``fraction > 0``) are drawn without replacement by ``torch.randperm`` from a generator seeded with
``seed``; these are the *unseen* entities. Then, for the returned graph:

- ``train`` keeps the training triples whose head and tail are both seen; the training triples
  that touch an unseen entity are dropped from training and kept, for filtering only, in a split
  named ``removed`` (they are true facts; a text model may not learn from them);
- every other split (``valid``, ``test``, …) keeps only the triples whose head or tail (or both)
  is unseen, so every evaluation query involves at least one entity that training never saw;
- the vocabularies (entities with their labels and descriptions, relations) are unchanged, so
  unseen entities remain candidates and are scored from their description.

The split is a pure function of the graph and ``(fraction, seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kelm.errors import ConfigError
from kelm.kg.model import KnowledgeGraph

REMOVED = "removed"


@dataclass
class InductiveSplit:
    kg: KnowledgeGraph
    unseen: frozenset[str]


def inductive_split(kg: KnowledgeGraph, fraction: float = 0.2, seed: int = 0, train: str = "train") -> InductiveSplit:
    """The graph with ``fraction`` of its entities unseen in training (see the module doc)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"task.inductive: the unseen fraction must be in (0, 1), got {fraction}")
    ids = sorted(kg.entities)
    n = max(1, round(fraction * len(ids)))
    g = torch.Generator().manual_seed(seed)
    unseen = frozenset(ids[i] for i in torch.randperm(len(ids), generator=g)[:n].tolist())
    out = KnowledgeGraph(name=f"{kg.name}-inductive", entities=dict(kg.entities), relations=dict(kg.relations))
    for split, triples in kg.splits.items():
        touches = [t.head in unseen or t.tail in unseen for t in triples]
        if split == train:
            out.splits[split] = [t for t, x in zip(triples, touches, strict=True) if not x]
            out.splits.setdefault(REMOVED, []).extend(t for t, x in zip(triples, touches, strict=True) if x)
        elif split != REMOVED:
            out.splits[split] = [t for t, x in zip(triples, touches, strict=True) if x]
    return InductiveSplit(out, unseen)


__all__ = ["REMOVED", "InductiveSplit", "inductive_split"]
