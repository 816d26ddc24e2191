"""Deterministic, rank-sharded batches with an exact resume position.

Every epoch draws one permutation of the training set from ``(seed, epoch)``. Global batch
``b`` holds positions ``[b*B, (b+1)*B)`` of that permutation; rank ``r`` of ``W`` takes every
W-th sample of it, so each sample is seen once per epoch across ranks, and the union over
ranks is the same global batch at every world size. The position is ``(epoch, batch)``.

A data set that is `LengthGrouped` (a ``group_lengths`` attribute, one length per sample) is grouped by length:
each window of `GROUP_BATCHES` global batches of the permutation is sorted by length before it
is cut into batches, and the batches are then shuffled, all from ``(seed, epoch)``, so padded
batches waste little and the order is as reproducible as without grouping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from kelm.errors import ConfigError

#: Global batches per window that is sorted by length (for data sets with ``group_lengths``).
GROUP_BATCHES = 50


@dataclass
class DataPosition:
    """Where the loader stands: the epoch and the next global batch within it."""

    epoch: int = 0
    batch: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


@dataclass
class BatchRandom:
    """Randomness for one global batch that does not depend on the world size.

    The generator is seeded from ``(seed, epoch, batch)``; per-sample draws are made for the whole
    global batch and each rank keeps its own rows (every ``world``-th from ``rank``), so sample
    ``i`` gets the same draw at every world size. Shared draws are identical on every rank."""

    generator: torch.Generator
    global_size: int
    rank: int
    world: int

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        """``(my samples, *shape)`` integers in ``[0, high)``."""
        return torch.randint(high, (self.global_size, *shape), generator=self.generator)[self.rank :: self.world]

    def rand(self, *shape: int) -> torch.Tensor:
        """``(my samples, *shape)`` uniform floats in ``[0, 1)``."""
        return torch.rand((self.global_size, *shape), generator=self.generator)[self.rank :: self.world]

    def shared_randint(self, high: int, *shape: int) -> torch.Tensor:
        """``shape`` integers in ``[0, high)``, the same on every rank."""
        return torch.randint(high, shape, generator=self.generator)


@runtime_checkable
class LengthGrouped(Protocol):
    """A training set whose batches should hold samples of similar length (`group_by_length`)."""

    group_lengths: torch.Tensor  # one length per sample


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
        batch_random: bool = False,
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
        self._rng = batch_random  # collate(samples, rng=BatchRandom) (`Task.uses_batch_random`)

    def batches_per_epoch(self) -> int:
        n = len(self.data)
        return n // self.global_batch if self.drop_last else -(-n // self.global_batch)

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.data), generator=g)
        if isinstance(self.data, LengthGrouped):
            order = group_by_length(order, torch.as_tensor(self.data.group_lengths), self.global_batch, g)
        return order

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Batches from the current position to the end of the epoch; then the epoch advances."""
        order = self._order(self.position.epoch)
        while self.position.batch < self.batches_per_epoch():
            b = self.position.batch
            global_idx = order[b * self.global_batch : (b + 1) * self.global_batch]
            mine = global_idx[self.rank :: self.world_size].tolist()
            self.position.batch += 1
            samples = [self.data[i] for i in mine]
            if self._rng:
                g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.position.epoch) * 1_000_033 + b)
                yield self.collate(samples, rng=BatchRandom(g, len(global_idx), self.rank, self.world_size))
            else:
                yield self.collate(samples)
        self.position = DataPosition(self.position.epoch + 1, 0)


def group_by_length(
    order: torch.Tensor, lengths: torch.Tensor, batch: int, g: torch.Generator, window: int = GROUP_BATCHES
) -> torch.Tensor:
    """``order`` with each window of ``window`` batches sorted by length (longest first), then its
    full batches shuffled by ``g``; a trailing partial batch stays last, so ``drop_last`` drops it."""
    n_full = len(order) // batch * batch
    head, tail = order[:n_full], order[n_full:]
    span = batch * window
    parts = []
    for lo in range(0, n_full, span):
        chunk = head[lo : lo + span]
        parts.append(chunk[torch.sort(lengths[chunk], descending=True, stable=True).indices])
    if not parts:
        return order
    batches = torch.cat(parts).view(-1, batch)
    return torch.cat([batches[torch.randperm(len(batches), generator=g)].reshape(-1), tail])


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
