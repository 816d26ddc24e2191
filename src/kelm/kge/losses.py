"""1-N (KvsAll) losses over a ``(B, E)`` score matrix with sparse multi-hot answers.

The target is never materialised. For query ``b`` with answers ``A_b`` (``k_b = |A_b|``) and label
smoothing ``eps``:

- ``ce``:  ``y = (1 - eps) * 1[A_b] / k_b + eps / E``; loss ``-sum_j y_j log_softmax(x)_j`` =
  ``logsumexp(x) - (1 - eps) * mean_{A_b}(x) - eps * mean(x)``; gradient ``softmax(x) - y``.
- ``bce``: ``y = (1 - eps) * 1[A_b] + eps / E``; loss ``sum_j softplus(x_j) - y_j x_j``; gradient
  ``sigmoid(x) - y``.

The batch loss is the mean over queries. `one_to_n_loss` takes a score matrix: forward and backward
each make one or two passes over it (a fused log-softmax or softplus, then one exp or sigmoid in
place), where autograd through a dense target would make about seven.

`all_entity_loss` is the same loss for a model linear in the candidate (scores ``q @ table.T``):
it never holds the ``(B, E)`` matrix. Query rows go through in chunks whose scores fit in the
cache; per chunk it computes the scores, the loss and the score gradient in place, and that
gradient's two products (with the table for the queries' gradient, with the queries for the
table's), all in the forward pass. Backward only scales what forward saved. The work is the three
matmuls of the FLOP floor plus a few passes over cache-resident chunks.
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


#: Bytes of one chunk's ``(rows, E)`` score block in `all_entity_loss`, per CPU thread: a share of
#: the last-level cache (bench: WN18RR and FB15k-237 shapes on a 32 MiB L3, 1 and 2 threads:
#: fewer rows leave each thread's matmul too thin); on a GPU, a large slab.
CPU_CHUNK_BYTES_PER_THREAD = 12 * 2**20
GPU_CHUNK_BYTES = 512 * 2**20


def chunk_rows(num_entities: int, device: torch.device) -> int:
    """Query rows per chunk of `all_entity_loss`: a power of two, 16 at least."""
    budget = CPU_CHUNK_BYTES_PER_THREAD * torch.get_num_threads() if device.type == "cpu" else GPU_CHUNK_BYTES
    rows = max(16, budget // (4 * max(1, num_entities)))
    return 1 << (rows.bit_length() - 1)


class _AllEntityLoss(torch.autograd.Function):
    """Forward computes the loss and both gradients chunk by chunk; backward scales them.

    Per chunk the score block ``S`` becomes ``P = exp(S - max)`` (ce) or ``sigmoid(S)`` (bce) in
    place, and the score gradient is ``G = diag(a) P - Y`` with ``a`` = 1 / (row sum * B) or 1 / B
    and ``Y`` the sparse answer weights plus the smoothing constant. ``G`` is never formed: ``a``
    scales the small ``(n, D)`` factors of the products with ``P``, and ``Y``'s part is a gather
    and an index-add of answer rows (its constant part, a rank-one term, comes once at the end).
    """

    @staticmethod
    def forward(
        ctx: Any, q: Tensor, table: Tensor, rows: Tensor, cols: Tensor, kind: str, eps: float, chunk: int
    ) -> Tensor:
        B, E = q.shape[0], table.shape[0]
        qf, tf = q.float(), table.float()
        need_q, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        k = torch.bincount(rows, minlength=B).to(torch.float32)
        weight = (1.0 - eps) / k[rows] if kind == "ce" else torch.full(rows.shape, 1.0 - eps, device=q.device)
        answer_grad = (-weight / B)[:, None]
        grad_q = torch.empty_like(qf) if need_q else None
        grad_t = torch.zeros_like(tf) if need_t else None
        starts = torch.arange(0, B + chunk, chunk, device=rows.device).clamp_max(B)
        bounds = torch.searchsorted(rows, starts).tolist()
        work = torch.empty(min(chunk, B), E, device=q.device)
        total = torch.zeros((), dtype=torch.float64, device=q.device)
        for i, s in enumerate(range(0, B, chunk)):
            q_c = qf[s : s + chunk]
            S = torch.mm(q_c, tf.T, out=work[: len(q_c)])
            a, b = bounds[i], bounds[i + 1]
            r_c, c_c, w_c = rows[a:b] - s, cols[a:b], weight[a:b]
            loss = -(w_c * S[r_c, c_c]).sum()
            if eps:
                loss = loss - eps / E * S.sum()
            if kind == "ce":
                top = S.amax(dim=1)
                row_sum = S.sub_(top[:, None]).exp_().sum(dim=1)
                loss = loss + (top + row_sum.log()).sum()
                scale = 1.0 / (row_sum * B)
            else:
                loss = loss + F.softplus(S).sum()
                S.sigmoid_()
                scale = torch.full((len(q_c),), 1.0 / B, device=q.device)
            total += loss
            if grad_q is not None:
                g = torch.mm(S, tf, out=grad_q[s : s + len(q_c)]).mul_(scale[:, None])
                g.index_add_(0, r_c, tf[c_c] * answer_grad[a:b])
            if grad_t is not None:
                grad_t.addmm_(S.T, q_c * scale[:, None])
                grad_t.index_add_(0, c_c, q_c[r_c] * answer_grad[a:b])
        if eps and grad_q is not None:
            grad_q.sub_(eps / (E * B) * tf.sum(0))
        if eps and grad_t is not None:
            grad_t.sub_(eps / (E * B) * qf.sum(0))
        ctx.save_for_backward(grad_q, grad_t)
        ctx.dtypes = (q.dtype, table.dtype)
        return (total / B).to(torch.float32)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grad_q, grad_t = ctx.saved_tensors
        grads = []
        for g, dtype in zip((grad_q, grad_t), ctx.dtypes, strict=True):
            if g is not None:
                g = g.to(dtype) if bool(grad_out == 1) else (g * grad_out).to(dtype)
            grads.append(g)
        return grads[0], grads[1], None, None, None, None, None


def all_entity_loss(
    q: Tensor, table: Tensor, rows: Tensor, cols: Tensor, kind: str = "ce", eps: float = 0.0, chunk: int | None = None
) -> Tensor:
    """`one_to_n_loss` of the scores ``q @ table.T`` without materialising them.

    ``q`` ``(B, D)`` are the queries' vectors, ``table`` ``(E, D)`` the candidates' embeddings;
    the true answers are at ``(rows, cols)``. Gradients reach both ``q`` and ``table``.
    ``chunk``: query rows per block (default `chunk_rows`).
    """
    if kind not in ("ce", "bce"):
        raise ValueError(f"unknown 1-N loss {kind!r}")
    if len(rows) > 1 and bool((rows[1:] < rows[:-1]).any()):
        order = torch.argsort(rows, stable=True)
        rows, cols = rows[order], cols[order]
    chunk = chunk or chunk_rows(table.shape[0], table.device)
    return _AllEntityLoss.apply(q, table, rows.contiguous(), cols.contiguous(), kind, float(eps), int(chunk))
