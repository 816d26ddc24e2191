"""Negative-sampling training (sLCWA): each training triple is contrasted with corrupted ones under a
margin-ranking, softplus, self-adversarial (Sun et al. 2019) or cross-entropy loss (the true entity
against its negatives, LibKGE's "kl")."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kelm.kge.sampling import NegativeSampler
from kelm.kge.training.base import TripleRows, TrueTriples, corrupted_scores
from kelm.train.data import BatchRandom
from kelm.train.task import Batch

NS_LOSSES = ("margin", "softplus", "self-adversarial", "ce")


def contrastive_loss(
    pos: torch.Tensor, neg: torch.Tensor, name: str, margin: float, adversarial_temperature: float
) -> torch.Tensor:
    """The loss of positive scores ``(B,)`` against negative scores ``(B, N)``."""
    if name == "margin":
        return F.relu(margin - pos[:, None] + neg).mean()
    if name == "softplus":
        return (F.softplus(-pos) + F.softplus(neg).mean(1)).mean()
    if name == "ce":  # softmax over the true entity (column 0) and its negatives
        return (torch.logsumexp(torch.cat([pos[:, None], neg], 1), 1) - pos).mean()
    # self-adversarial: negatives weighted by their detached softmax
    weights = F.softmax(adversarial_temperature * neg, dim=1).detach()
    pos_term = -F.logsigmoid(margin + pos)
    neg_term = -(weights * F.logsigmoid(-margin - neg)).sum(1)
    return ((pos_term + neg_term) / 2).mean()


class NegativeSampling(TripleRows):
    """Training triples (reciprocal rows included) with negatives from a `NegativeSampler`."""

    def __init__(
        self,
        train_triples: torch.Tensor,
        sampler: NegativeSampler,
        loss: str,
        margin: float,
        temperature: float,
        collective: bool = False,
    ):
        super().__init__(train_triples, sampler.num_entities, sampler.num_relations, sampler.reciprocal)
        self.sampler = sampler
        self.loss_name, self.margin, self.adversarial_temperature = loss, margin, temperature
        #: Every rank makes the same model calls (a sharded entity table: `corrupted_scores`).
        self.collective = collective

    def collate(self, samples: list[Any], rng: BatchRandom | None = None) -> Batch:
        """Triples with negatives drawn from ``rng`` (world-size-free), or the global RNG without it."""
        batch = super().collate(samples)
        return batch | self.sampler(batch["triples"], rng)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, TrueTriples]:
        triples, neg, corrupt_head = batch["triples"], batch["negatives"], batch["corrupt_head"]
        h, r, t = triples.unbind(1)
        E = self.num_entities
        if neg.dim() == 1:  # shared: every triple meets the same N entities on the corrupted side
            pos = model("score_hrt", h, r, t).float()
            neg_scores = corrupted_scores(model, h, r, t, neg, corrupt_head, E, self.collective)
        else:  # the true entity rides along as candidate 0, so one batched matmul scores all
            true = torch.where(corrupt_head, h, t)
            cands = torch.cat([true[:, None], neg], 1)
            scores = corrupted_scores(model, h, r, t, cands, corrupt_head, E, self.collective)
            pos, neg_scores = scores[:, 0], scores[:, 1:]
        loss = contrastive_loss(pos, neg_scores, self.loss_name, self.margin, self.adversarial_temperature)
        return loss, (h, r, t)


__all__ = ["NS_LOSSES", "NegativeSampling", "contrastive_loss"]
