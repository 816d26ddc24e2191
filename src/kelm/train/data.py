"""Deterministic, rank-sharded batches with an exact resume position.

Every epoch draws one permutation of the training set from ``(seed, epoch)``. Global batch
``b`` holds positions ``[b*B, (b+1)*B)`` of that permutation; rank ``r`` of ``W`` takes every
W-th sample of it, so each sample is seen once per epoch across ranks, and the union over
ranks is the same global batch at every world size. The position is ``(epoch, batch)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kelm.errors import ConfigError


@dataclass
class DataPosition:
    """Where the loader stands: the epoch and the next global batch within it."""

    epoch: int = 0
    batch: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


class ShardedBatches:
    """Yields this rank's share of each global batch, resumable at any batch boundary."""

    def __init__(
        self,
        data: Sequence[Any],
        collate: Callable[[list[Any]], dict[str, Any]],
        global_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        drop_last: bool = True,
    ):
        if global_batch % world_size:
            raise ConfigError(
                f"train.batch_size ({global_batch}) must be divisible by the number of processes ({world_size})"
            )
        if len(data) < global_batch and drop_last:
            raise ConfigError(f"train.batch_size ({global_batch}) exceeds the {len(data)} training samples")
        self.data, self.collate = data, collate
        self.global_batch, self.rank, self.world_size, self.seed = global_batch, rank, world_size, seed
        self.drop_last = drop_last
        self.position = DataPosition()

    def batches_per_epoch(self) -> int:
        n = len(self.data)
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.data), generator=g)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Batches from the current position to the end of the epoch; then the epoch advances."""
        order = self._order(self.position.epoch)
        while self.position.batch < self.batches_per_epoch():
            b = self.position.batch
            global_idx = order[b * self.global_batch : (b + 1) * self.global_batch]
            mine = global_idx[self.rank :: self.world_size].tolist()
            self.position.batch += 1
            yield self.collate([self.data[i] for i in mine])
        self.position = DataPosition(self.position.epoch + 1, 0)


def eval_batches(
    data: Sequence[Any],
    collate: Callable[[list[Any]], dict[str, Any]],
    batch_size: int,
    rank: int,
    world: int,
    equal_shares: bool = False,
) -> list[dict[str, Any]]:
    """This rank's contiguous share of the evaluation set, in order, in batches.

    Shares are exact (every sample once) and may differ in size by rank. Strategies whose
    forward pass is collective (FSDP2) need the same number of batches everywhere: with
    ``equal_shares`` each share is padded to ``ceil(n / world)`` samples by wrapping around to the
    start of the set, as ``DistributedSampler`` does, so up to ``world - 1`` samples count twice.
    """
    per = -(-len(data) // world)
    lo = rank * per
    end = lo + per if equal_shares else min(len(data), lo + per)
    idx = [k % len(data) for k in range(lo, end)]
    return [collate([data[i] for i in idx[s : s + batch_size]]) for s in range(0, len(idx), batch_size)]
