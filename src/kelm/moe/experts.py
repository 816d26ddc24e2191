"""Experts stored as stacked weights, run over tokens already sorted by expert.

``SwiGLUExperts`` (fused gate/up projection, for models trained from scratch) and ``MLPExperts``
(a generic two-layer MLP with the source model's activation and biases, for upcycling) share one
entry point: ``experts(x_sorted, counts)`` with ``x_sorted`` of shape (S, D), grouped by expert in
expert order, and ``counts`` the rows per expert. Two implementations give the same result:

- ``grouped_mm``: ``torch._grouped_mm`` over the whole sorted buffer, one kernel per projection.
  Used where the device has a kernel for it: CUDA compute capability 9.0+ (bf16), and the CPU
  kernel of recent torch; each (device, dtype) is probed once with a tiny forward and backward,
  and shapes whose rows are not 16-byte aligned skip it.
- ``loop``: one matmul per expert over its contiguous slice (``split``/``unbind``, whose backward
  passes are a single ``cat``/``stack``), the portable fallback.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kelm.moe.config import MoEConfig

ACT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}

_GMM_SUPPORT: dict[tuple[str, torch.dtype], bool] = {}


def _probe_grouped_mm(device: torch.device, dtype: torch.dtype) -> bool:
    try:
        with torch.enable_grad():
            return _probe_once(device, dtype)
    except (RuntimeError, NotImplementedError, TypeError, AttributeError):
        return False


def _probe_once(device: torch.device, dtype: torch.dtype) -> bool:
    x = torch.randn(6, 16, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(2, 16, 16, device=device, dtype=dtype, requires_grad=True)
    offs = torch.tensor([2, 6], device=device, dtype=torch.int32)
    y = torch._grouped_mm(x, w, offs=offs)
    y.backward(torch.ones_like(y))
    ref = torch.cat([x[:2] @ w[0], x[2:] @ w[1]])
    tol = 1e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-4
    return bool(torch.allclose(y.float(), ref.float(), atol=tol, rtol=tol)) and w.grad is not None


def grouped_mm_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` runs (forward and backward) on this device and dtype."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (9, 0):
        return False
    key = (device.type, dtype)
    if key not in _GMM_SUPPORT:
        _GMM_SUPPORT[key] = _probe_grouped_mm(device, dtype)
    return _GMM_SUPPORT[key]


def _aligned(dtype: torch.dtype, *dims: int) -> bool:
    size = torch.empty((), dtype=dtype).element_size()
    return all(d * size % 16 == 0 for d in dims)


def _bounds(counts: list[int]) -> list[tuple[int, int, int]]:
    out, start = [], 0
    for e, c in enumerate(counts):
        if c:
            out.append((e, start, start + c))
        start += c
    return out


def _weight_grad(w: torch.Tensor, bounds: list[tuple[int, int, int]]) -> torch.Tensor:
    """An uninitialised gradient buffer for stacked weights, zeroed only for experts without rows."""
    grad = torch.empty_like(w)
    used = {e for e, _, _ in bounds}
    for e in range(w.shape[0]):
        if e not in used:
            grad[e].zero_()
    return grad


class _SwiGLULoop(torch.autograd.Function):
    """SwiGLU experts over expert-sorted rows with hand-written backward: each projection is one
    ``mm`` per expert written into a preallocated buffer (no ``cat``/``stack`` of pieces), and the
    gating runs once over all rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, counts: list[int]) -> torch.Tensor:
        S, Fh = x.shape[0], w2.shape[1]
        bounds = _bounds(counts)
        h = x.new_empty(S, 2 * Fh)
        for e, s, t in bounds:
            torch.mm(x[s:t], w1[e], out=h[s:t])
        g, u = h[:, :Fh], h[:, Fh:]
        act = F.silu(g)
        a = act * u
        y = x.new_empty(S, w2.shape[2])
        for e, s, t in bounds:
            torch.mm(a[s:t], w2[e], out=y[s:t])
        ctx.save_for_backward(x, w1, w2, h, a, act)
        ctx.bounds = bounds
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w1, w2, h, a, act = ctx.saved_tensors
        bounds = ctx.bounds
        dy = dy.contiguous()
        S, Fh = x.shape[0], w2.shape[1]
        da = x.new_empty(S, Fh)
        dw2 = _weight_grad(w2, bounds) if ctx.needs_input_grad[2] else None
        for e, s, t in bounds:
            torch.mm(dy[s:t], w2[e].t(), out=da[s:t])
            if dw2 is not None:
                torch.mm(a[s:t].t(), dy[s:t], out=dw2[e])
        g, u = h[:, :Fh], h[:, Fh:]
        dh = x.new_empty(S, 2 * Fh)
        torch.mul(da, act, out=dh[:, Fh:])
        torch.ops.aten.silu_backward.grad_input(da.mul_(u), g, grad_input=dh[:, :Fh])
        dx = x.new_empty(x.shape) if ctx.needs_input_grad[0] else None
        dw1 = _weight_grad(w1, bounds) if ctx.needs_input_grad[1] else None
        for e, s, t in bounds:
            if dx is not None:
                torch.mm(dh[s:t], w1[e].t(), out=dx[s:t])
            if dw1 is not None:
                torch.mm(x[s:t].t(), dh[s:t], out=dw1[e])
        return dx, dw1, dw2, None


class _SwiGLUPadded(torch.autograd.Function):
    """SwiGLU experts as batched matmuls over an (E, C, D) buffer padded to the largest expert's
    row count C. Padding rows are zero, so they add nothing to outputs or weight gradients. On CPU
    a ``bmm`` over equal-sized groups runs the experts' GEMMs in parallel (one per thread) and
    beats a loop of per-expert ``mm`` calls, which split each thin GEMM over the threads; it is
    chosen when the padding costs little (balanced load)."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, pad_idx: torch.Tensor, cap: int
    ) -> torch.Tensor:
        E, D, Fh = w1.shape[0], x.shape[1], w2.shape[1]
        xp = x.new_zeros(E * cap, D).index_copy_(0, pad_idx, x).view(E, cap, D)
        h = torch.bmm(xp, w1)
        g, u = h[..., :Fh], h[..., Fh:]
        act = F.silu(g)
        a = act * u
        y = torch.bmm(a, w2).view(E * cap, D).index_select(0, pad_idx)
        ctx.save_for_backward(xp, w1, w2, h, a, act, pad_idx)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        xp, w1, w2, h, a, act, pad_idx = ctx.saved_tensors
        E, cap, D = xp.shape
        Fh = w2.shape[1]
        dyp = dy.new_zeros(E * cap, D).index_copy_(0, pad_idx, dy.contiguous()).view(E, cap, D)
        da = torch.bmm(dyp, w2.transpose(1, 2))
        dw2 = torch.bmm(a.transpose(1, 2), dyp) if ctx.needs_input_grad[2] else None
        g, u = h[..., :Fh], h[..., Fh:]
        dh = torch.empty_like(h)
        torch.mul(da, act, out=dh[..., Fh:])
        torch.ops.aten.silu_backward.grad_input(da.mul_(u), g, grad_input=dh[..., :Fh])
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.bmm(dh, w1.transpose(1, 2)).view(E * cap, D).index_select(0, pad_idx)
        dw1 = torch.bmm(xp.transpose(1, 2), dh) if ctx.needs_input_grad[1] else None
        return dx, dw1, dw2, None, None


#: Padded batched matmuls are used while E * (largest expert's rows) <= PAD_SLACK * rows.
PAD_SLACK = 1.25


class Experts(nn.Module):
    """Base: ``n`` experts (the local ones under expert parallelism) and the implementation switch."""

    def __init__(self, cfg: MoEConfig, n: int):
        super().__init__()
        self.cfg, self.n = cfg, n
        self.last_impl = ""  # the path the last forward pass took

    def use_grouped_mm(self, x: torch.Tensor) -> bool:
        """``grouped_mm`` when asked for, or by default on CUDA devices that run it."""
        impl = self.cfg.impl
        if impl in ("loop", "padded") or (impl == "auto" and x.device.type != "cuda"):
            return False
        assert self.cfg.d_ff is not None
        if not _aligned(x.dtype, self.cfg.d_model, self.cfg.d_ff) or x.data_ptr() % 16:
            return False
        return grouped_mm_supported(x.device, x.dtype)

    def forward(self, x_sorted: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Rows of ``x_sorted`` grouped by expert; ``counts`` (n,) rows per expert."""
        if x_sorted.shape[0] == 0:
            # keep the weights in the graph, so backward still reaches them (and expert-parallel peers)
            return x_sorted * 0 + self.first_weight().sum().to(x_sorted.dtype) * 0
        if self.use_grouped_mm(x_sorted):
            self.last_impl = "grouped_mm"
            return self.grouped(x_sorted, counts.cumsum(0).to(torch.int32))
        sizes = counts.tolist()
        if self.padded_ok(sizes, x_sorted.shape[0]):
            self.last_impl = "padded"
            return self.padded(x_sorted, sizes)
        self.last_impl = "loop"
        return self.loop(x_sorted, sizes)

    def padded_ok(self, sizes: list[int], rows: int) -> bool:
        impl = self.cfg.impl
        return impl == "padded" or (impl == "auto" and len(sizes) * max(sizes) <= PAD_SLACK * rows)

    def padded(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        return self.loop(x, sizes)

    def first_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def grouped(self, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loop(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        raise NotImplementedError


class SwiGLUExperts(Experts):
    """``down(silu(x W_gate) * (x W_up))`` per expert; ``w_gate_up`` is (E, D, 2F): gate then up."""

    def __init__(self, cfg: MoEConfig, n: int):
        super().__init__(cfg, n)
        D, Fh = cfg.d_model, cfg.d_ff
        assert Fh is not None
        self.w_gate_up = nn.Parameter(torch.empty(n, D, 2 * Fh))
        self.w_down = nn.Parameter(torch.empty(n, Fh, D))
        nn.init.normal_(self.w_gate_up, std=0.02)
        nn.init.normal_(self.w_down, std=0.02 / math.sqrt(2))

    def first_weight(self) -> torch.Tensor:
        return self.w_gate_up

    def grouped(self, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        w1, w2 = self.w_gate_up.to(x.dtype), self.w_down.to(x.dtype)
        g, u = torch._grouped_mm(x, w1, offs=offs).chunk(2, dim=-1)
        return torch._grouped_mm(F.silu(g) * u, w2, offs=offs)

    def padded(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        cap = max(sizes)
        pad_idx = torch.cat([torch.arange(e * cap, e * cap + c, device=x.device) for e, c in enumerate(sizes) if c])
        return _SwiGLUPadded.apply(x, self.w_gate_up.to(x.dtype), self.w_down.to(x.dtype), pad_idx, cap)

    def loop(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        return _SwiGLULoop.apply(x, self.w_gate_up.to(x.dtype), self.w_down.to(x.dtype), counts)

    def dense(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Expert ``e`` on every row of ``x`` (for the dense reference)."""
        g, u = (x @ self.w_gate_up[e]).chunk(2, dim=-1)
        return (F.silu(g) * u) @ self.w_down[e]


class MLPExperts(Experts):
    """``act(x W_in + b_in) W_out + b_out`` per expert: the classic transformer FFN (BERT, GPT-2)."""

    def __init__(self, cfg: MoEConfig, n: int):
        super().__init__(cfg, n)
        D, Fh = cfg.d_model, cfg.d_ff
        assert Fh is not None
        self.act = ACT[cfg.activation]
        self.w_in = nn.Parameter(torch.empty(n, D, Fh))
        self.w_out = nn.Parameter(torch.empty(n, Fh, D))
        nn.init.normal_(self.w_in, std=0.02)
        nn.init.normal_(self.w_out, std=0.02 / math.sqrt(2))
        if cfg.bias:
            self.b_in = nn.Parameter(torch.zeros(n, Fh))
            self.b_out = nn.Parameter(torch.zeros(n, D))
        else:
            self.register_parameter("b_in", None)
            self.register_parameter("b_out", None)

    def first_weight(self) -> torch.Tensor:
        return self.w_in

    def grouped(self, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        h = torch._grouped_mm(x, self.w_in.to(x.dtype), offs=offs)
        if self.b_in is not None:
            counts = torch.diff(offs, prepend=offs.new_zeros(1)).long()
            rows = torch.repeat_interleave(torch.arange(self.n, device=x.device), counts, output_size=x.shape[0])
            h = h + self.b_in.to(x.dtype).index_select(0, rows)
            return torch._grouped_mm(self.act(h), self.w_out.to(x.dtype), offs=offs) + self.b_out.to(
                x.dtype
            ).index_select(0, rows)
        return torch._grouped_mm(self.act(h), self.w_out.to(x.dtype), offs=offs)

    def loop(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        w1s, w2s = self.w_in.unbind(0), self.w_out.unbind(0)
        b1s = self.b_in.unbind(0) if self.b_in is not None else None
        b2s = self.b_out.unbind(0) if self.b_out is not None else None
        outs = []
        for e, xe in enumerate(x.split(counts)):
            if not xe.shape[0]:
                continue
            if b1s is not None and b2s is not None:
                h = torch.addmm(b1s[e].to(x.dtype), xe, w1s[e].to(x.dtype))
                outs.append(torch.addmm(b2s[e].to(x.dtype), self.act(h), w2s[e].to(x.dtype)))
            else:
                outs.append(self.act(xe @ w1s[e].to(x.dtype)) @ w2s[e].to(x.dtype))
        return torch.cat(outs)

    def dense(self, x: torch.Tensor, e: int) -> torch.Tensor:
        h = x @ self.w_in[e]
        if self.b_in is not None:
            h = h + self.b_in[e]
        y = self.act(h) @ self.w_out[e]
        return y + self.b_out[e] if self.b_out is not None else y


def build_experts(cfg: MoEConfig, n: int) -> Experts:
    return SwiGLUExperts(cfg, n) if cfg.expert_type == "swiglu" else MLPExperts(cfg, n)


class SharedExpert(nn.Module):
    """Experts every token goes through (DeepSeek-style shared experts), as one wider FFN."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        assert cfg.d_ff is not None
        wide = MoEConfig(**{**cfg.to_dict(), "d_ff": cfg.d_ff * cfg.n_shared_experts, "n_experts": 1, "top_k": 1})
        self.ffn = build_experts(wide, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn.dense(x, 0)
