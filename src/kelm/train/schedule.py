"""Learning-rate schedules: linear warmup, then constant, linear or cosine decay."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def lr_factor(step: int, total: int, warmup: int, kind: str, min_ratio: float) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if kind == "linear":
        decay = 1.0 - progress
    elif kind == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule '{kind}'")
    return min_ratio + (1.0 - min_ratio) * decay


def warmup_of(warmup_steps: int, warmup_ratio: float, total: int) -> int:
    """Warmup steps of a run of ``total`` steps: ``warmup_steps`` if set, else ``warmup_ratio`` of
    the steps, rounded up (the HF Trainer's rule)."""
    return warmup_steps if warmup_steps > 0 else math.ceil(warmup_ratio * total)


def build_scheduler(optimizer: Optimizer, total: int, warmup: int, kind: str, min_ratio: float) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, kind, min_ratio))
