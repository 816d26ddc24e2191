"""Gradient clipping by global norm, with the scaling folded into fused optimizer steps.

`torch.nn.utils.clip_grad_norm_` reads every gradient once for the norm and then reads and writes
every gradient again to scale it. Fused Adam, AdamW and Adagrad kernels already take a
``grad_scale`` (the gradients are divided by it as they are read, the hook AMP's ``GradScaler``
uses), so for them the clipping factor goes there and the second pass disappears. The step is the
same up to rounding (``g / (1/c)`` instead of ``g * c``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

FUSED_GRAD_SCALE = (torch.optim.Adam, torch.optim.Adagrad)  # AdamW is an Adam


def takes_grad_scale(optimizer: torch.optim.Optimizer) -> bool:
    """True when every parameter group of ``optimizer`` runs a fused kernel that accepts ``grad_scale``."""
    return isinstance(optimizer, FUSED_GRAD_SCALE) and all(g.get("fused") for g in optimizer.param_groups)


def clip_gradients(
    optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor], total_norm: torch.Tensor, max_norm: float
) -> None:
    """Scale the gradients of ``params`` by ``min(1, max_norm / (total_norm + 1e-6))``, as
    `torch.nn.utils.clip_grad_norm_` does; for a fused optimizer, in its next `step`."""
    if takes_grad_scale(optimizer):
        coef = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)
        optimizer.grad_scale = coef.reciprocal()  # read by the next step(); cleared by `after_step`
        return
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total_norm)


def after_step(optimizer: torch.optim.Optimizer) -> None:
    """Forget a clipping factor handed to the optimizer, so it applies to one step only."""
    if getattr(optimizer, "grad_scale", None) is not None:
        optimizer.grad_scale = None


__all__ = ["after_step", "clip_gradients", "takes_grad_scale"]
