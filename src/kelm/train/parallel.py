"""What a model brings to the engine for its own parallelism (a plan, as torchtitan's ``ModelSpec``
carries ``parallelize_fn``).

A strategy (DDP, FSDP2, DiLoCo) is applied from outside the model; a model may also shard some of
its parameters itself (experts over a group of ranks) and name the repeated blocks that FSDP2
shards and activation checkpointing recomputes one at a time. The task hands the engine that plan
(`kelm.train.task.Task.parallel_plan`); the engine never needs to know what kind of model it is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kelm.train.distributed import DistInfo


class ParallelPlan:
    """The default plan: no parameters sharded by the model itself, no repeated blocks."""

    def __init__(self, units: Callable[[nn.Module], list[nn.Module]] | None = None):
        self._units = units

    def units(self, model: nn.Module) -> list[nn.Module]:
        """The repeated blocks to shard or checkpoint one by one (empty: the model is one unit)."""
        return self._units(model) if self._units is not None else []

    def apply(self, model: nn.Module, strategy: str, info: DistInfo) -> int:
        """Shard what the model shards itself, before the strategy wraps it; returns that degree
        (1: nothing sharded). Raise `kelm.errors.ConfigError` if it cannot run under ``strategy``."""
        return 1

    def prepare_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Hook once the optimizer exists, for a model whose `apply` sharded parameters."""

    def grad_norm(self, model: nn.Module) -> torch.Tensor:
        """The norm of the whole model's gradient, each parameter counted once across ranks."""
        return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


def block_units(attribute: str) -> Callable[[nn.Module], list[nn.Module]]:
    """A `ParallelPlan` ``units`` function reading the ``nn.ModuleList`` a model keeps in ``attribute``."""

    def units(model: nn.Module) -> list[nn.Module]:
        blocks = getattr(model, attribute)
        if not isinstance(blocks, nn.ModuleList):
            raise TypeError(f"{type(model).__name__}.{attribute} is not an nn.ModuleList")
        return list(blocks)

    return units


__all__ = ["ParallelPlan", "block_units"]
