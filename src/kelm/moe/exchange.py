"""Token exchange between expert shards: a differentiable ``all_to_all_single`` with variable
splits, and the dispatch → local experts → combine round trip of one MoE layer (`kelm.moe.parallel`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


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


__all__ = ["all_to_all", "expert_parallel_experts"]
