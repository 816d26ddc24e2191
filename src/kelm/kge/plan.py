"""The parallel plan of a KGE model whose entity table is sharded row-wise (`kelm.kge.sharded`).

It follows `kelm.moe.plan.ExpertParallelPlan`: the model holds only its own rows from the start
(`LinkPredictionTask.build_model`), and the plan, before DDP wraps the model, joins the tables to
a device mesh of all ranks, hides them from DDP (each rank's table gradient already sums every
rank's batch through the reverse exchange; a hook divides it by the world size, as DDP averages the
relation table), and gives the optimizer's per-row state the tables' DTensor layout, so Adam or
Adagrad state is sharded with the rows and DCP reshards it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from kelm.errors import ConfigError
from kelm.kge.sharded import ShardedEmbedding, sharded_tables
from kelm.train.distributed import DistInfo
from kelm.train.parallel import ParallelPlan
from kelm.train.sharded_state import optimizer_indices, register_sharded_state


class ShardedEntityPlan(ParallelPlan):
    """Entity tables sharded over every rank; the relation table and the rest left to the strategy."""

    def apply(self, model: nn.Module, strategy: str, info: DistInfo) -> int:
        tables = sharded_tables(model)
        if not tables:
            return 1
        if strategy != "ddp":
            raise ConfigError(f"task.shard_entities runs with strategy 'ddp', not '{strategy}'")
        mesh = init_device_mesh(info.device.type, (info.world_size,))
        names = {id(p): n for n, p in model.named_parameters()}
        ignored = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
        for table in tables:
            table.attach(mesh)
            table.weight.register_hook(lambda grad: grad / info.world_size)
            ignored.append(names[id(table.weight)])
        model._ddp_params_and_buffers_to_ignore = ignored  # type: ignore[assignment]
        return info.world_size

    def prepare_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        shard_optimizer_rows(optimizer, sharded_tables(model))

    def grad_norm(self, model: nn.Module) -> torch.Tensor:
        return grad_norm(model)


def shard_optimizer_rows(optimizer: torch.optim.Optimizer, tables: list[ShardedEmbedding]) -> None:
    """Optimizer state-dict hooks: the per-row state of each sharded table (Adam moments, Adagrad
    sums) is saved as a DTensor of the table's layout and loaded back as this rank's rows."""
    index = optimizer_indices(optimizer)
    register_sharded_state(optimizer, {index[id(t.weight)]: partial(_rows_as_dtensor, t) for t in tables})


def _rows_as_dtensor(table: ShardedEmbedding, value: Any) -> Any:
    if isinstance(value, torch.Tensor) and not isinstance(value, DTensor) and value.shape == table.weight.shape:
        return table.as_dtensor(value)
    return value


@torch.no_grad()
def grad_norm(model: nn.Module) -> torch.Tensor:
    """The norm of the whole gradient: the sharded tables' part summed over the ranks. Collective."""
    sharded = {id(t.weight) for t in sharded_tables(model)}
    grads = [(id(p) in sharded, p.grad) for p in model.parameters() if p.grad is not None]
    zero = torch.zeros((), dtype=torch.float64, device=grads[0][1].device if grads else None)

    def squares(own: bool) -> torch.Tensor:
        part = [g for s, g in grads if s == own]
        return torch.nn.utils.get_total_norm(part).double() ** 2 if part else zero.clone()

    rows = squares(True)
    dist.all_reduce(rows)
    return (squares(False) + rows).sqrt().float()


__all__ = ["ShardedEntityPlan", "grad_norm", "shard_optimizer_rows"]
