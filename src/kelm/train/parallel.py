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
    """The default plan shards nothing itself; ``blocks`` names the model's ``nn.ModuleList`` of
    repeated blocks (None: the model is one unit)."""

    def __init__(self, blocks: str | None = None):
        self.blocks = blocks

    def units(self, model: nn.Module) -> list[nn.Module]:
        """The repeated blocks to shard or checkpoint one by one (empty: the model is one unit)."""
        return list(self._container(model)) if self.blocks is not None else []

    def wrap_units(self, model: nn.Module, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Replace each repeated block by ``wrap(block)`` (activation checkpointing)."""
        container = self._container(model)
        for i, unit in enumerate(list(container)):
            container[i] = wrap(unit)

    def _container(self, model: nn.Module) -> nn.ModuleList:
        blocks = getattr(model, self.blocks or "", None)
        if not isinstance(blocks, nn.ModuleList):
            raise TypeError(f"{type(model).__name__}.{self.blocks} is not an nn.ModuleList of blocks")
        return blocks

    def apply(self, model: nn.Module, strategy: str, info: DistInfo) -> int:
        """Shard what the model shards itself, before the strategy wraps it; returns that degree
        (1: nothing sharded). Raise `kelm.errors.ConfigError` if it cannot run under ``strategy``."""
        return 1

    def prepare_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Hook once the optimizer exists, for a model whose `apply` sharded parameters."""

    def grad_norm(self, model: nn.Module) -> torch.Tensor:
        """The norm of the whole model's gradient, each parameter counted once across ranks."""
        return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


__all__ = ["ParallelPlan"]
