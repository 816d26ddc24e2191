"""Indexable samples of KGE training and evaluation: training rows by index, held-out triples."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Indices(Sequence[int]):
    """Training triples addressed by index (the triples themselves stay in one tensor)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:  # type: ignore[override]
        if not 0 <= i < self.n:
            raise IndexError(i)
        return i


class Triples(Sequence[torch.Tensor]):
    """Held-out triples; each sample is one ``(3,)`` row."""

    def __init__(self, triples: torch.Tensor):
        self.triples = triples

    def __len__(self) -> int:
        return len(self.triples)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.triples[i]


def with_reciprocals(triples: torch.Tensor, num_relations: int) -> torch.Tensor:
    """``triples`` followed by their inverses ``(t, r + R, h)``."""
    h, r, t = triples.unbind(1)
    return torch.cat([triples, torch.stack([t, r + num_relations, h], 1)])


__all__ = ["Indices", "Triples", "with_reciprocals"]
