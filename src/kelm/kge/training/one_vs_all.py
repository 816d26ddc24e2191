"""1-vs-all training: every training triple scores all entities against its one true tail (and,
without reciprocal relations, its true head) with label-smoothed cross-entropy. With
``candidates`` (reciprocal relations only) the tails are ranked among those entities alone, e.g.
the entities seen in an inductive split's training part."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kelm.kge.training.base import TripleRows, TrueTriples
from kelm.train.task import Batch


class OneVsAll(TripleRows):
    """Cross-entropy of each triple's true entity among all entities."""

    def __init__(
        self,
        train_triples: torch.Tensor,
        num_entities: int,
        num_relations: int,
        reciprocal: bool,
        eps: float,
        candidates: torch.Tensor | None = None,
    ):
        super().__init__(train_triples, num_entities, num_relations, reciprocal)
        self.label_smoothing = eps
        self.candidates = self.position = None
        if candidates is not None and len(candidates) < num_entities:
            if not reciprocal:
                raise ValueError("1-vs-all over a candidate subset needs reciprocal relations")
            self.candidates = candidates
            # each entity's column among the candidates (-1: not a candidate)
            self.position = torch.full((num_entities,), -1, dtype=torch.int64)
            self.position[candidates] = torch.arange(len(candidates))

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, TrueTriples]:
        h, r, t = batch["triples"].unbind(1)
        eps = self.label_smoothing
        if self.candidates is not None:
            scores = model("score_t", h, r, self.candidates.to(h.device)).float()
            return F.cross_entropy(scores, self.position.to(h.device)[t], label_smoothing=eps), (h, r, t)
        # cross-entropy of the true tail (and head) is the 1-N "ce" loss with one answer per query
        B = len(h)
        if self.reciprocal:
            e, rel, is_tail, answers = h, r, torch.ones_like(h, dtype=torch.bool), t
        else:  # tail queries then head queries; the loss is the sum of the two sides' means
            e, rel, answers = torch.cat([h, t]), torch.cat([r, r]), torch.cat([t, h])
            is_tail = torch.arange(2 * B, device=h.device) < B
        rows = torch.arange(len(e), device=h.device)
        loss = model("loss_all", e, rel, is_tail, rows, answers, "ce", eps)
        return (loss if self.reciprocal else 2 * loss), (h, r, t)


__all__ = ["OneVsAll"]
