"""Distillation losses: logits (Hinton et al.), hidden states and attention maps (TinyBERT, MiniLM)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logit_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, averaged over rows (the last dim is classes)."""
    t = temperature
    s_log = F.log_softmax(student.float() / t, dim=-1).flatten(0, -2)
    t_log = F.log_softmax(teacher.float() / t, dim=-1).flatten(0, -2)
    return F.kl_div(s_log, t_log, log_target=True, reduction="batchmean") * (t * t)


def hidden_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error of hidden states over the real (``mask``) tokens."""
    m = mask.to(student.dtype).unsqueeze(-1)
    return ((student.float() - teacher.float()) ** 2 * m).sum() / (m.sum() * student.shape[-1]).clamp_min(1)


def attention_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL of teacher to student attention distributions (batch, heads, query, key), averaged over
    heads and real query tokens; head counts must match."""
    eps = 1e-12
    kl = (teacher * ((teacher + eps).log() - (student + eps).log())).sum(-1)  # batch, heads, query
    m = mask.to(kl.dtype)[:, None, :]
    return (kl * m).sum() / (m.sum() * kl.shape[1]).clamp_min(1)


__all__ = ["attention_kl", "hidden_mse", "logit_kd"]
