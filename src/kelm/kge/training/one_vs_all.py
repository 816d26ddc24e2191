"""1-vs-all training: every training triple scores all entities against its one true tail (and,
without reciprocal relations, its true head) with label-smoothed cross-entropy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kelm.kge.samples import Indices, with_reciprocals
from kelm.kge.training.base import TrainingRegime, TrueTriples
from kelm.train.data import BatchRandom
from kelm.train.task import Batch


class OneVsAll(TrainingRegime):
    """Cross-entropy of each triple's true entity among all entities."""

    def __init__(
        self,
        train_triples: torch.Tensor,
        num_entities: int,
        num_relations: int,
        reciprocal: bool,
        label_smoothing: float,
    ):
        super().__init__(num_entities, num_relations, reciprocal)
        self.rows = with_reciprocals(train_triples, num_relations) if reciprocal else train_triples
        self.label_smoothing = label_smoothing

    def samples(self) -> Sequence[Any]:
        return Indices(len(self.rows))

    def collate(self, samples: list[Any], rng: BatchRandom | None = None) -> Batch:
        return {"triples": self.rows[torch.tensor(samples, dtype=torch.int64)]}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, TrueTriples]:
        h, r, t = batch["triples"].unbind(1)
        eps = self.label_smoothing
        loss = F.cross_entropy(model("score_t", h, r).float(), t, label_smoothing=eps)
        if not self.reciprocal:
            loss = loss + F.cross_entropy(model("score_h", r, t).float(), h, label_smoothing=eps)
        return loss, (h, r, t)


__all__ = ["OneVsAll"]
