"""Expert parallelism: experts sharded over the ranks of a process group, tokens exchanged with
``all_to_all_single`` (variable splits; gloo supports it on CPU, NCCL on GPUs).

Every rank keeps the router and all non-expert parameters; rank ``r`` of an EP group of size
``P`` holds experts ``r*E/P .. (r+1)*E/P - 1``. A forward pass routes the local tokens, sorts them
by global expert, sends each rank the rows for its experts (dispatch), runs the local experts
and sends the outputs back (combine); both exchanges are differentiable (the backward pass is the
reverse exchange).

With DDP the expert parameters are excluded from DDP's all-reduce (``_ddp_params_and_buffers_to_ignore``
on the model): each rank's expert gradient already sums the contributions of every rank's tokens
through the combine exchange. A gradient hook divides it by the data-parallel world size, so it
is the gradient of the mean of the ranks' losses, like DDP's average for the other parameters;
when the EP group is smaller than the world, experts are replicated over ``world / P`` groups and
the hook also sums the replicas' gradients (all-reduce over the ranks holding the same experts).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from kelm.errors import ConfigError


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: Any) -> torch.Tensor:
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        out_splits, in_splits = ctx.splits
        g = grad.new_empty((sum(in_splits), *grad.shape[1:]))
        dist.all_to_all_single(g, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return g, None, None, None


def all_to_all(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: Any = None) -> torch.Tensor:
    """Differentiable ``all_to_all_single`` along dim 0 with variable splits."""
    return _AllToAll.apply(x, out_splits, in_splits, group)


def expert_parallel_experts(
    experts: nn.Module, x_sorted: torch.Tensor, counts: torch.Tensor, group: Any, ep_size: int
) -> torch.Tensor:
    """Run ``x_sorted`` (rows grouped by global expert, ``counts`` (E,) per expert) through the experts
    sharded over ``group``; returns the outputs in the same order."""
    E = counts.numel()
    n_local = E // ep_size
    recv = torch.empty_like(counts)
    dist.all_to_all_single(recv, counts.contiguous(), group=group)  # row s: what rank s sends my experts
    recv_m = recv.view(ep_size, n_local)
    send_splits = counts.view(ep_size, n_local).sum(1).tolist()
    recv_splits = recv_m.sum(1).tolist()
    x_recv = all_to_all(x_sorted, recv_splits, send_splits, group)
    # received rows are grouped by source rank, then by local expert: regroup by local expert
    local_id = torch.repeat_interleave(torch.arange(n_local, device=counts.device).repeat(ep_size), recv_m.reshape(-1))
    perm = torch.argsort(local_id, stable=True)
    y_local = experts(x_recv.index_select(0, perm), recv_m.sum(0))
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    return all_to_all(y_local.index_select(0, inverse), send_splits, recv_splits, group)


def ep_groups(ep_size: int) -> tuple[Any, Any]:
    """(this rank's EP group, its replica group) for consecutive EP groups of ``ep_size`` ranks.
    Collective: every rank must call it, in the same order."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if ep_size < 1 or world % ep_size:
        raise ConfigError(f"moe: expert-parallel degree {ep_size} must divide the world size {world}")
    ep_group = replica_group = None
    for start in range(0, world, ep_size):
        g = dist.new_group(list(range(start, start + ep_size))) if ep_size < world else dist.group.WORLD
        if start <= rank < start + ep_size:
            ep_group = g
    n_rep = world // ep_size
    for i in range(ep_size):
        members = [i + j * ep_size for j in range(n_rep)]
        g = dist.new_group(members) if n_rep > 1 else None
        if rank in members:
            replica_group = g
    return ep_group, replica_group


def enable_expert_parallel(model: nn.Module, ep_size: int | None = None, average_grads: bool = True) -> list[str]:
    """Shard the experts of every MoE layer of ``model`` over EP groups of ``ep_size`` ranks
    (default: the whole world). Marks expert parameters for DDP to ignore and, with
    ``average_grads``, installs the gradient hooks described above. Returns the expert parameter
    names. Collective."""
    from kelm.moe.layer import MoELayer

    world = dist.get_world_size()
    ep_size = ep_size or world
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, MoELayer)]
    if not layers:
        raise ConfigError("moe: the model has no MoE layers to shard")
    ep_group, replica_group = ep_groups(ep_size)
    ep_rank = dist.get_rank(ep_group) if ep_group is not None else 0
    names: list[str] = []
    for prefix, layer in layers:
        layer.shard_experts(ep_group, ep_size, ep_rank)
        for pname, p in layer.experts.named_parameters():
            names.append(f"{prefix}.experts.{pname}" if prefix else f"experts.{pname}")
            if average_grads:
                p.register_hook(_grad_average_hook(world, replica_group))
    ignored = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    model._ddp_params_and_buffers_to_ignore = ignored + names  # type: ignore[assignment]
    return names


def _grad_average_hook(world: int, replica_group: Any) -> Any:
    def hook(grad: torch.Tensor) -> torch.Tensor:
        if replica_group is not None:
            grad = grad.clone()
            dist.all_reduce(grad, group=replica_group)
        return grad / world

    return hook
