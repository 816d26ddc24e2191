"""1-vs-all training: every training triple scores all entities against its one true tail (and,
without reciprocal relations, its true head) with label-smoothed cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kelm.kge.training.base import TripleRows, TrueTriples
from kelm.train.task import Batch


class OneVsAll(TripleRows):
    """Cross-entropy of each triple's true entity among all entities."""

    def __init__(
        self, train_triples: torch.Tensor, num_entities: int, num_relations: int, reciprocal: bool, eps: float
    ):
        super().__init__(train_triples, num_entities, num_relations, reciprocal)
        self.label_smoothing = eps

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, TrueTriples]:
        h, r, t = batch["triples"].unbind(1)
        eps = self.label_smoothing
        loss = F.cross_entropy(model("score_t", h, r).float(), t, label_smoothing=eps)
        if not self.reciprocal:
            loss = loss + F.cross_entropy(model("score_h", r, t).float(), h, label_smoothing=eps)
        return loss, (h, r, t)


__all__ = ["OneVsAll"]
