"""What a KGE training regime is: its samples, how they batch and the loss over a batch.

Each regime is one small class (as PyKEEN separates LCWA and sLCWA training from its samplers):
`OneToN` (KvsAll), `OneVsAll` and `NegativeSampling`. The link-prediction task picks one, adds
the regularizer, and leaves evaluation to the filtered ranker.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kelm.kge.samples import Indices, with_reciprocals
from kelm.train.data import BatchRandom
from kelm.train.task import Batch

#: The true triples a batch trained on, as ``(h, r, t)``: what a regularizer is computed over.
TrueTriples = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class TrainingRegime(ABC):
    """Samples, batches and the loss of one way of training a KGE scorer (`kelm.kge.scorer.KGEScorer`)."""

    def __init__(self, num_entities: int, num_relations: int, reciprocal: bool):
        self.num_entities, self.num_relations, self.reciprocal = num_entities, num_relations, reciprocal

    @abstractmethod
    def samples(self) -> Sequence[Any]:
        """Indexable training samples."""

    @abstractmethod
    def collate(self, samples: list[Any], rng: BatchRandom | None = None) -> Batch:
        """A training batch of these samples (``rng``: the engine's world-size-free randomness)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, TrueTriples]:
        """Mean loss over the batch, and the true triples it covered."""

    def batch_weight(self, batch: Batch) -> int:
        """How many samples the batch's mean loss averages over."""
        return len(batch["triples"])


class TripleRows(TrainingRegime):
    """A regime whose samples are training triples by index (reciprocal rows ``(t, r + R, h)`` added)."""

    def __init__(self, train_triples: torch.Tensor, num_entities: int, num_relations: int, reciprocal: bool):
        super().__init__(num_entities, num_relations, reciprocal)
        self.rows = with_reciprocals(train_triples, num_relations) if reciprocal else train_triples

    def samples(self) -> Sequence[Any]:
        return Indices(len(self.rows))

    def collate(self, samples: list[Any], rng: BatchRandom | None = None) -> Batch:
        return {"triples": self.rows[torch.tensor(samples, dtype=torch.int64)]}


def corrupted_scores(
    model: nn.Module,
    h: torch.Tensor,
    r: torch.Tensor,
    t: torch.Tensor,
    cands: torch.Tensor | None,
    corrupt_head: torch.Tensor,
    num_entities: int,
    collective: bool = False,
) -> torch.Tensor:
    """``(B, C)`` float scores with the tail, or where ``corrupt_head`` the head, replaced by each
    candidate: all entities (``cands`` None), a shared ``(C,)`` set or per-row ``(B, C)`` sets.

    ``collective`` (a sharded entity table, whose every lookup all ranks make together): both
    sides are scored on every rank, one of them possibly over no rows."""
    if not collective and not bool(corrupt_head.any()):
        return model("score_t", h, r, cands).float()
    if not collective and bool(corrupt_head.all()):
        return model("score_h", r, t, cands).float()
    per_row = cands is not None and cands.dim() == 2
    width = num_entities if cands is None else cands.shape[-1]
    out = torch.empty(len(h), width, device=h.device)
    for rows, op, a, b in ((~corrupt_head, "score_t", h, r), (corrupt_head, "score_h", r, t)):
        out[rows] = model(op, a[rows], b[rows], cands[rows] if per_row else cands).float()
    return out


__all__ = ["TrainingRegime", "TripleRows", "TrueTriples", "corrupted_scores"]
