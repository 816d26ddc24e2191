"""The parallel plan of a model with MoE layers (`kelm.train.parallel.ParallelPlan`)."""

from __future__ import annotations

import torch
from torch import nn

from kelm.errors import ConfigError
from kelm.moe.layer import moe_layers
from kelm.moe.parallel import enable_expert_parallel, grad_norm, shard_optimizer_state
from kelm.train.distributed import DistInfo
from kelm.train.parallel import ParallelPlan


class ExpertParallelPlan(ParallelPlan):
    """The plan of a model with MoE layers: experts sharded over groups of ``expert_parallel`` ranks
    (hidden from DDP, each expert's optimizer state saved once), the rest left to the strategy."""

    def apply(self, model: nn.Module, strategy: str, info: DistInfo) -> int:
        """Expert parallelism asked for by the model's MoE layers (``expert_parallel`` > 1).
        Returns the degree (1: none)."""
        degree = max((m.cfg.expert_parallel for m in moe_layers(model)), default=1)
        if degree == 1:
            return 1
        if strategy not in ("single", "ddp"):
            raise ConfigError(f"expert_parallel = {degree} runs with strategy 'ddp', not '{strategy}'")
        if info.world_size % degree:
            raise ConfigError(
                f"expert_parallel = {degree} shards experts over {degree} processes, "
                f"but {info.world_size} were launched (use --nproc {degree} or a multiple of it)"
            )
        enable_expert_parallel(model, degree)
        return degree

    def prepare_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        shard_optimizer_state(optimizer, model)

    def grad_norm(self, model: nn.Module) -> torch.Tensor:
        return grad_norm(model)


__all__ = ["ExpertParallelPlan"]
