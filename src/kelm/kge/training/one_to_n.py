"""1-N (KvsAll) training: every ``(entity, relation)`` query seen in training scores all entities
against the multi-hot set of its true answers (label-smoothed BCE or cross-entropy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kelm.kg.tensors import ragged_gather
from kelm.kge.training.base import TrainingRegime, TrueTriples
from kelm.train.data import BatchRandom
from kelm.train.task import Batch


class Queries(Sequence[int]):
    """1-n training queries ``(entity, relation, is_tail)`` with their true answers (CSR layout)."""

    def __init__(self, queries: torch.Tensor, offsets: torch.Tensor, answers: torch.Tensor):
        self.queries, self.offsets, self.answers = queries, offsets, answers

    @classmethod
    def build(cls, triples: torch.Tensor, num_relations: int, reciprocal: bool) -> Queries:
        h, r, t = triples.unbind(1)
        ones = torch.ones_like(h)
        if reciprocal:  # (h, r) -> t and (t, r + R) -> h, all tail queries
            parts = [torch.stack([h, r, ones, t], 1), torch.stack([t, r + num_relations, ones, h], 1)]
        else:  # (h, r, ?) tail queries and (?, r, t) head queries
            parts = [torch.stack([h, r, ones, t], 1), torch.stack([t, r, 0 * ones, h], 1)]
        rows = torch.unique(torch.cat(parts), dim=0)  # sorted by query, then answer
        keys, counts = torch.unique_consecutive(rows[:, :3], dim=0, return_counts=True)
        offsets = torch.zeros(len(keys) + 1, dtype=torch.int64)
        offsets[1:] = counts.cumsum(0)
        return cls(keys, offsets, rows[:, 3].contiguous())

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int) -> int:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return i

    def collate(self, idx: list[int]) -> Batch:
        """Queries plus the multi-hot targets as (row, entity) index pairs."""
        index = torch.tensor(idx, dtype=torch.int64)
        starts = self.offsets[index]
        rows, cols = ragged_gather(self.answers, starts, self.offsets[index + 1] - starts)
        return {"query": self.queries[index], "target_rows": rows, "target_cols": cols}


class OneToN(TrainingRegime):
    """BCE or CE against each query's multi-hot answers (`kelm.kge.losses`: no dense target, and
    for linear models no score matrix, is built)."""

    def __init__(
        self,
        train_triples: torch.Tensor,
        num_entities: int,
        num_relations: int,
        reciprocal: bool,
        loss: str,
        label_smoothing: float,
    ):
        super().__init__(num_entities, num_relations, reciprocal)
        self.queries = Queries.build(train_triples, num_relations, reciprocal)
        self.loss_name, self.label_smoothing = loss, label_smoothing

    def samples(self) -> Sequence[Any]:
        return self.queries

    def collate(self, samples: list[Any], rng: BatchRandom | None = None) -> Batch:
        return self.queries.collate(samples)

    def batch_weight(self, batch: Batch) -> int:
        return len(batch["query"])

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, TrueTriples]:
        q, rows, cols = batch["query"], batch["target_rows"], batch["target_cols"]
        e, r, is_tail = q[:, 0], q[:, 1], q[:, 2].bool()
        loss = model("loss_all", e, r, is_tail, rows, cols, self.loss_name, self.label_smoothing)
        # regularise over the true triples of the batch, in the direction each query was asked
        qe, qr, tail = e[rows], r[rows], is_tail[rows]
        h = torch.where(tail, qe, cols)
        t = torch.where(tail, cols, qe)
        return loss, (h, qr, t)


__all__ = ["OneToN", "Queries"]
