"""The sparse MoE layer: router → dispatcher → experts → combine, plus the model-level helpers
that collect auxiliary losses and router statistics from every MoE layer of a model."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kelm.errors import ConfigError
from kelm.moe.config import MoEConfig
from kelm.moe.exchange import expert_parallel_experts
from kelm.moe.experts import SharedExpert, build_experts
from kelm.moe.router import RouterOutput, TopKRouter, switch_loss, z_loss


@dataclass
class DispatchPlan:
    """Which token slots go where. Slot ``s = j * N + t`` is token ``t``'s ``j``-th choice."""

    order: torch.Tensor  # kept slots, sorted by expert (first choices before second ones)
    token: torch.Tensor  # the token of each kept slot
    kept: torch.Tensor  # (E,) kept slots per expert
    counts: torch.Tensor  # (E,) routed slots per expert, before capacity


def capacity_of(cfg: MoEConfig, n_tokens: int) -> int | None:
    """Slots per expert per forward pass, or None (dropless)."""
    if cfg.capacity_factor is None:
        return None
    return math.ceil(cfg.capacity_factor * n_tokens * cfg.top_k / cfg.n_experts)


def plan_dispatch(experts_NK: torch.Tensor, n_experts: int, capacity: int | None) -> DispatchPlan:
    """Sort token slots by expert; with a capacity keep each expert's first ``capacity`` slots."""
    N = experts_NK.shape[0]
    flat = experts_NK.t().reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_experts)
    kept = counts
    if capacity is not None:
        starts = counts.cumsum(0) - counts
        pos = torch.arange(order.numel(), device=order.device) - starts.index_select(0, flat.index_select(0, order))
        order = order[pos < capacity]
        kept = counts.clamp(max=capacity)
    return DispatchPlan(order, order % N, kept, counts)


class _DispatchRows(torch.autograd.Function):
    """Dropless dispatch: ``x[token]`` (every token ``k`` times); backward gathers the slot
    gradients back into slot order and sums the ``k`` copies (no scatter-add)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, token: torch.Tensor, inverse: torch.Tensor, k: int) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        ctx.k = k
        return x.index_select(0, token)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (inverse,) = ctx.saved_tensors
        g = grad.index_select(0, inverse)
        return g.view(ctx.k, -1, g.shape[-1]).sum(0), None, None, None


class _PermuteRows(torch.autograd.Function):
    """``x[index]`` for a permutation ``index``; backward is the inverse permutation (a gather)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class _AuxLossInBackward(torch.autograd.Function):
    """Identity on the layer output whose backward also feeds gradient 1 to the auxiliary loss, so
    the loss trains the router even when the task's loss does not add it (Megatron-LM's
    ``MoEAuxLossAutoScaler`` does the same)."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        ctx.aux_meta = (aux.dtype, aux.device)
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype, device = ctx.aux_meta
        return grad, torch.ones((), dtype=dtype, device=device)


class MoELayer(nn.Module):
    """Sparse FFN on ``(..., D)`` inputs. ``domain_ids`` (one per token, -1 = none) feed the
    knowledge-guided router input when ``n_domains`` > 0.

    In training mode each forward pass records router statistics (`stats`) and leaves its
    auxiliary loss (Switch + z-loss, weighted) in ``aux_loss`` for `moe_aux_loss` to collect, or,
    with ``aux_in_backward`` (for tasks that do not know about MoE), adds its gradient in the
    backward pass itself (at full weight per micro-batch: with gradient accumulation over n
    micro-batches the auxiliary loss counts n times as much as the task loss)."""

    def __init__(self, cfg: MoEConfig | dict[str, Any]):
        super().__init__()
        cfg = cfg if isinstance(cfg, MoEConfig) else MoEConfig.from_dict(cfg)
        self.cfg = cfg
        self.router = TopKRouter(cfg)
        self.experts = build_experts(cfg, cfg.n_experts)
        self.shared = SharedExpert(cfg) if cfg.n_shared_experts else None
        self.ep_group: Any = None
        self.ep_size, self.ep_rank = 1, 0
        self.aux_loss: torch.Tensor | None = None
        self.aux_in_backward = False
        #: Domain ids set from outside before a forward pass (`kelm.moe.domains.attach_domain_routing`).
        self.context_domains: torch.Tensor | None = None

    # -- expert parallelism -----------------------------------------------------------------------
    def shard_experts(self, group: Any, ep_size: int, ep_rank: int) -> None:
        """Keep only this rank's experts (``ep_rank`` of ``ep_size``); collective use via
        `kelm.moe.enable_expert_parallel`."""
        E = self.cfg.n_experts
        if E % ep_size:
            raise ConfigError(f"moe: {E} experts cannot be split evenly over an expert-parallel degree of {ep_size}")
        n_local = E // ep_size
        sharded = build_experts(self.cfg, n_local)
        with torch.no_grad():
            for (name, p), (_, full) in zip(sharded.named_parameters(), self.experts.named_parameters(), strict=True):
                p.copy_(full[ep_rank * n_local : (ep_rank + 1) * n_local])
                del name
        self.experts = sharded.to(self.router.weight.device)
        self.ep_group, self.ep_size, self.ep_rank = group, ep_size, ep_rank

    # -- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, domain_ids: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if domain_ids is None and self.context_domains is not None and self.context_domains.numel() == x2.shape[0]:
            domain_ids = self.context_domains.to(x2.device)
        ro = self.router(x2, domain_ids)
        plan = plan_dispatch(ro.experts, self.cfg.n_experts, capacity_of(self.cfg, x2.shape[0]))
        dropless = plan.order.numel() == x2.shape[0] * self.cfg.top_k
        if dropless:  # slots are a permutation: gathers only, forward and backward
            inverse = torch.empty_like(plan.order)
            inverse[plan.order] = torch.arange(plan.order.numel(), device=plan.order.device)
            x_sorted = _DispatchRows.apply(x2, plan.token, inverse, self.cfg.top_k)
        else:
            x_sorted = x2.index_select(0, plan.token)
        if self.ep_size > 1:
            y_sorted = expert_parallel_experts(self.experts, x_sorted, plan.kept, self.ep_group, self.ep_size)
        else:
            y_sorted = self.experts(x_sorted, plan.kept)
        if dropless:
            y_slots = _PermuteRows.apply(y_sorted, inverse, plan.order).view(self.cfg.top_k, -1, x2.shape[-1])
            out = (y_slots * ro.weights.t().unsqueeze(-1).to(y_slots.dtype)).sum(0)
        else:
            w_sorted = ro.weights.t().reshape(-1).index_select(0, plan.order).to(y_sorted.dtype)
            out = torch.zeros_like(x2).index_add_(0, plan.token, y_sorted * w_sorted.unsqueeze(-1))
        if self.shared is not None:
            out = out + self.shared(x2)
        self._after_routing(ro, plan, domain_ids)
        if self.aux_in_backward and self.aux_loss is not None and self.aux_loss.requires_grad:
            out = _AuxLossInBackward.apply(out, self.aux_loss)
        return out.view(shape)

    def _after_routing(self, ro: RouterOutput, plan: DispatchPlan, domain_ids: torch.Tensor | None) -> None:
        if not self.training:
            self.aux_loss = None
            return
        cfg = self.cfg
        dropped = int(plan.counts.sum() - plan.kept.sum()) if cfg.capacity_factor is not None else 0
        acc = self.router.record(ro, dropped, domain_ids)
        E = cfg.n_experts
        loss = ro.logits.new_zeros(())
        if cfg.aux_loss_coef:
            loss = loss + cfg.aux_loss_coef * switch_loss(acc[:E], float(acc[2 * E]), cfg.top_k, ro.probs)
        if cfg.z_loss_coef:
            loss = loss + cfg.z_loss_coef * z_loss(ro.logits)
        self.aux_loss = loss

    def stats(self) -> dict[str, float]:
        """Router statistics of the current global batch: per-expert load, load_max, dropped_fraction,
        router_entropy, aux_loss (the global Switch loss), z_loss and, with domains, domain_expert_nmi."""
        return self.router.stats()

    @torch.no_grad()
    def dense_reference(self, x: torch.Tensor, domain_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Every expert on every token, masked by the same routing and capacity (for tests).
        Needs all experts on this rank."""
        return self.dense_forward(x, domain_ids)

    def dense_forward(self, x: torch.Tensor, domain_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Differentiable dense reference: gate matrix (N, E) of kept weights times every expert's output."""
        if self.ep_size > 1:
            raise ConfigError("moe: the dense reference needs every expert on one rank")
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        ro = self.router(x2, domain_ids)
        N, E = x2.shape[0], self.cfg.n_experts
        plan = plan_dispatch(ro.experts, E, capacity_of(self.cfg, N))
        slot_expert = ro.experts.t().reshape(-1)
        slot_weight = ro.weights.t().reshape(-1)
        gates = torch.zeros(N * E, dtype=slot_weight.dtype, device=x.device)
        idx = plan.token * E + slot_expert.index_select(0, plan.order)
        gates = gates.index_add(0, idx, slot_weight.index_select(0, plan.order)).view(N, E)
        out = sum(gates[:, e : e + 1].to(x.dtype) * self.experts.dense(x2, e) for e in range(E))
        if self.shared is not None:
            out = out + self.shared(x2)
        return out.view(shape)  # type: ignore[union-attr]


def moe_layers(model: nn.Module) -> list[MoELayer]:
    return [m for m in model.modules() if isinstance(m, MoELayer)]


def moe_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the weighted auxiliary losses of the last training forward pass of every MoE layer,
    to add to the task loss; None when the model has none (dense, or evaluation mode)."""
    losses = [m.aux_loss for m in moe_layers(model) if m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else None


def moe_stats(model: nn.Module, per_expert: bool = False) -> dict[str, float]:
    """Router statistics of every MoE layer, averaged over layers as ``moe_<name>``; with
    ``per_expert`` also ``moe<i>_load_e<j>`` for layer ``i``."""
    layers = [m.stats() for m in moe_layers(model)]
    layers = [s for s in layers if s]
    if not layers:
        return {}
    out: dict[str, float] = {}
    keys = [k for k in layers[0] if not k.startswith("load_e")]
    for k in keys:
        out[f"moe_{k}"] = sum(s[k] for s in layers) / len(layers)
    if per_expert:
        for i, s in enumerate(layers):
            out.update({f"moe{i}_{k}": v for k, v in s.items() if k.startswith("load_e")})
    return out
