"""Small knowledge graphs and tasks shared by the text-KGC tests."""

from __future__ import annotations

from typing import Any

import torch

from kelm.kg.model import Entity, KnowledgeGraph, Relation, Triple

COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")


def toy_kg(items: int = 24, describe: bool = True) -> KnowledgeGraph:
    """Items whose description names their colour and shape; ``has_color``/``has_shape`` facts.

    Every entity occurs in training; every fourth item's colour fact is held out (valid, test)."""
    kg = KnowledgeGraph(name="toy")
    for c in COLORS:
        kg.entities[c] = Entity(c, c, "a color" if describe else None)
    for s in SHAPES:
        kg.entities[s] = Entity(s, s, "a shape" if describe else None)
    kg.relations["has_color"] = Relation("has_color", "has color")
    kg.relations["has_shape"] = Relation("has_shape", "has shape")
    splits: dict[str, list[Triple]] = {"train": [], "valid": [], "test": []}
    for k in range(items):
        c, s = COLORS[k % len(COLORS)], SHAPES[k % len(SHAPES)]
        eid = f"item{k}"
        kg.entities[eid] = Entity(eid, f"item {k}", f"a {c} {s} thing" if describe else None)
        held = "valid" if k % 8 == 3 else "test" if k % 8 == 7 else "train"
        splits[held].append(Triple(eid, "has_color", c))
        splits["train"].append(Triple(eid, "has_shape", s))
    for name, triples in splits.items():
        kg.add_triples(name, triples)
    return kg


def tiny_cfg(**kw: Any) -> Any:
    """A ``text-kgc`` config on a from-scratch BERT (hidden 32, 2 layers) with MiniLM's tokenizer."""
    from kelm.tasks.text_kgc import TextKGCConfig

    base = {"dataset": "toy", "model": "tiny-bert", "hidden_size": 32, "num_layers": 2, "num_heads": 2}
    base["max_length"] = 24
    return TextKGCConfig(**(base | kw))


class FixedScorer:
    """A scorer with fixed random scores per (entity, relation) query (``2R`` relations: tail
    queries use ``r``, head queries ``r + R``)."""

    def __init__(self, E: int, R: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(E, 2 * R, E, generator=g)
        self.num_entities, self.R = E, R

    def score_t(self, h: torch.Tensor, r: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        return self.table[h, r].clone()

    def score_h(self, r: torch.Tensor, t: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        return self.table[t, r + self.R].clone()
