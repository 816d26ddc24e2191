"""Negative samplers for KGE training (uniform, Bernoulli, shared), drawn from a world-size-free
`kelm.train.data.BatchRandom` so one process and many draw the same negatives."""

from __future__ import annotations

from typing import Literal

import torch

from kelm.train.data import BatchRandom

SAMPLERS = ("uniform", "bernoulli", "shared")


def head_probabilities(triples: torch.Tensor, num_relations: int) -> torch.Tensor:
    """Bernoulli sampling (Wang et al. 2014): corrupt the head of relation r with tph / (tph + hpt)."""
    probs = torch.full((num_relations,), 0.5)
    for r in triples[:, 1].unique().tolist():
        rows = triples[triples[:, 1] == r]
        tph = len(rows) / len(rows[:, 0].unique())
        hpt = len(rows) / len(rows[:, 2].unique())
        probs[r] = tph / (tph + hpt)
    return probs


class NegativeSampler:
    """Which side of each triple to corrupt and the entities that replace it.

    With reciprocal relations every row is a tail query, so only tails are corrupted; otherwise the
    head is corrupted with probability 1/2, or per relation as Bernoulli sampling says. ``uniform``
    and ``bernoulli`` draw ``num_negatives`` per row that never repeat the row's true entity (drawn
    from ``E - 1`` ids, those at or above it shifted up by one); ``shared`` draws one set for the
    whole batch, which may hit it."""

    def __init__(
        self,
        kind: Literal["uniform", "bernoulli", "shared"],
        num_entities: int,
        num_negatives: int,
        reciprocal: bool,
        train_triples: torch.Tensor,
        num_relations: int,
    ):
        self.kind, self.num_negatives = kind, num_negatives
        self.num_entities, self.num_relations, self.reciprocal = num_entities, num_relations, reciprocal
        self.head_prob = head_probabilities(train_triples, num_relations) if kind == "bernoulli" else None

    def __call__(self, triples: torch.Tensor, rng: BatchRandom | None) -> dict[str, torch.Tensor]:
        """``negatives`` (``(B, N)``, or ``(N,)`` shared) and ``corrupt_head`` ``(B,)``."""
        B, E, N = len(triples), self.num_entities, self.num_negatives
        if rng is None:
            rng = BatchRandom(torch.default_generator, B, 0, 1)
        if self.reciprocal:
            corrupt_head = torch.zeros(B, dtype=torch.bool)
        else:
            p_head = self.head_prob[triples[:, 1]] if self.head_prob is not None else 0.5
            corrupt_head = rng.rand() < p_head
        if self.kind == "shared":
            return {"negatives": rng.shared_randint(E, N), "corrupt_head": corrupt_head}
        true = torch.where(corrupt_head, triples[:, 0], triples[:, 2])
        negatives = rng.randint(max(E - 1, 1), N)
        negatives += (negatives >= true[:, None]).long() if E > 1 else 0
        return {"negatives": negatives, "corrupt_head": corrupt_head}


__all__ = ["SAMPLERS", "NegativeSampler", "head_probabilities"]
