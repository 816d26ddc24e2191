"""1-N (KvsAll) losses over a ``(B, E)`` score matrix with sparse multi-hot answers.

The target is never materialised. For query ``b`` with answers ``A_b`` (``k_b = |A_b|``) and label
smoothing ``eps``:

- ``ce``:  ``y = (1 - eps) * 1[A_b] / k_b + eps / E``; loss ``-sum_j y_j log_softmax(x)_j`` =
  ``logsumexp(x) - (1 - eps) * mean_{A_b}(x) - eps * mean(x)``; gradient ``softmax(x) - y``.
- ``bce``: ``y = (1 - eps) * 1[A_b] + eps / E``; loss ``sum_j softplus(x_j) - y_j x_j``; gradient
  ``sigmoid(x) - y``.

The batch loss is the mean over queries. Forward and backward each make one or two passes over the
scores (a fused log-softmax or softplus, then one exp or sigmoid in place), where autograd through a
dense target would make about seven.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


class _OneToNLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, rows: Tensor, cols: Tensor, kind: str, eps: float) -> Tensor:
        B, E = logits.shape
        k = torch.bincount(rows, minlength=B).to(logits.dtype)
        picked = logits[rows, cols]
        if kind == "ce":
            act = F.log_softmax(logits, dim=1)  # kept: exp() of it is the softmax the gradient needs
            lse = logits[:, 0] - act[:, 0]
            answer_mean = torch.zeros(B, dtype=logits.dtype, device=logits.device).index_add_(0, rows, picked) / k
            per_query = lse - (1.0 - eps) * answer_mean
            if eps:
                per_query = per_query - eps * logits.mean(1)
            loss = per_query.mean()
            weight = (1.0 - eps) / k[rows]
        else:
            act = logits
            loss = F.softplus(logits).sum() - (1.0 - eps) * picked.sum()
            if eps:
                loss = loss - eps / E * logits.sum()
            loss = loss / B
            weight = torch.full_like(picked, 1.0 - eps)
        ctx.save_for_backward(act, rows, cols, weight)
        ctx.kind, ctx.eps = kind, eps
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        act, rows, cols, weight = ctx.saved_tensors
        B, E = act.shape
        scale = grad_out / B
        grad = act.exp() if ctx.kind == "ce" else torch.sigmoid(act)
        if ctx.eps:
            grad.sub_(ctx.eps / E)
        grad.index_put_((rows, cols), -weight, accumulate=True)
        grad.mul_(scale)
        return grad, None, None, None, None


def one_to_n_loss(logits: Tensor, rows: Tensor, cols: Tensor, kind: str = "ce", eps: float = 0.0) -> Tensor:
    """Mean 1-N loss of ``logits`` ``(B, E)`` whose true answers are at ``(rows, cols)``.

    ``kind`` is ``"ce"`` (softmax cross-entropy, target spread over the answers) or ``"bce"``
    (binary cross-entropy summed over entities); ``eps`` is label smoothing.
    """
    if kind not in ("ce", "bce"):
        raise ValueError(f"unknown 1-N loss {kind!r}")
    return _OneToNLoss.apply(logits.float(), rows, cols, kind, float(eps))
