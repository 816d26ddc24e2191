"""RotatE's distance to many candidates, ``d[b, c] = sum_k |q[b, k] - cand[c, k]|`` over complex
coordinates, without materialising the ``(B, C, D)`` differences.

The distance is not linear in the candidate, so no matmul computes it: each ``(b, c, k)`` needs its
own modulus. Autograd through broadcasting keeps several ``(B, C, D)`` tensors alive (difference,
squares, modulus, and their gradients), which for RotatE's usual sizes (512 rows, 256-1024
negatives, 1000 dimensions) are gigabytes written to and read back from memory. Here the rows go
through in chunks whose blocks fit in the cache, and backward recomputes the differences of its
chunk instead of keeping them: the same arithmetic, several times faster on a CPU
(``bench/kge_step_profile.py``, RotatE rows).

Vectors are [real half, imaginary half] on the last axis, as everywhere in `kelm.kge.models`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kelm.train.sparse_grads import RowGradient

#: Bytes of one chunk's ``(rows, C, D)`` block per CPU thread.
CHUNK_BYTES_PER_THREAD = 4 * 2**20
#: Smallest modulus divided by in backward: the gradient of ``|z|`` at ``z = 0`` is taken as 0.
_EPS = 1e-9


class _Buffers:
    """Work space for one chunk, allocated once per call: ``(rows, C, K)`` differences and moduli.

    Reusing it matters on a CPU: a fresh multi-megabyte tensor per chunk costs page faults that
    take longer than the arithmetic."""

    def __init__(self, rows: int, C: int, K: int, like: Tensor):
        self.dr, self.di, self.m = (like.new_empty(rows, C, K) for _ in range(3))

    def differences(self, q_cD: Tensor, cand: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Real and imaginary parts of ``q - cand`` and the squared moduli, for a chunk of rows."""
        K, n = q_cD.shape[-1] // 2, len(q_cD)
        dr, di, m = self.dr[:n], self.di[:n], self.m[:n]
        q = q_cD[:, None]
        torch.sub(q[..., :K], cand[..., :K], out=dr)
        torch.sub(q[..., K:], cand[..., K:], out=di)
        torch.mul(dr, dr, out=m).addcmul_(di, di)
        return dr, di, m


def _rows(table: Tensor, idx: Tensor) -> Tensor:
    return table.index_select(0, idx.reshape(-1)).view(*idx.shape, table.shape[1])


class _ModulusDistance(torch.autograd.Function):
    """Shared candidates ``cand (C, D)`` (``idx`` None) or per-row ones ``table[idx]`` (``idx (B, C)``)."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, cand: Tensor, idx: Tensor | None, chunk: int, sparse: bool) -> Tensor:
        C, K = (cand.shape[0] if idx is None else idx.shape[1]), cand.shape[1] // 2
        out = torch.empty(len(q), C, dtype=cand.dtype, device=q.device)
        buf = _Buffers(min(chunk, len(q)), C, K, cand)
        shared = cand[None] if idx is None else None
        for s in range(0, len(q), chunk):
            block = shared if idx is None else _rows(cand, idx[s : s + chunk])
            _, _, sq = buf.differences(q[s : s + chunk].to(cand.dtype), block)
            torch.sum(sq.sqrt_(), -1, out=out[s : s + chunk])
        ctx.save_for_backward(q, cand, idx)
        ctx.chunk, ctx.sparse = chunk, sparse
        return out.to(torch.promote_types(q.dtype, cand.dtype))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, cand, idx = ctx.saved_tensors
        K = q.shape[1] // 2
        need_q, need_c = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_q = torch.empty_like(q) if need_q else None
        grad_c = torch.zeros_like(cand) if need_c and idx is None else None
        table_grad = RowGradient(cand, idx, ctx.sparse) if need_c and idx is not None else None
        buf = _Buffers(min(ctx.chunk, len(q)), grad.shape[1], K, cand)
        shared = cand[None] if idx is None else None
        grad = grad.to(cand.dtype)
        for s in range(0, len(q), ctx.chunk):
            block = shared if idx is None else _rows(cand, idx[s : s + ctx.chunk])
            dr, di, w = buf.differences(q[s : s + ctx.chunk].to(cand.dtype), block)
            # d|z|/dz = z / |z|, times the incoming gradient of each (row, candidate)
            w.clamp_min_(_EPS * _EPS).rsqrt_().mul_(grad[s : s + ctx.chunk, :, None])
            dr.mul_(w)
            di.mul_(w)
            if grad_q is not None:
                grad_q[s : s + ctx.chunk, :K] = dr.sum(1)
                grad_q[s : s + ctx.chunk, K:] = di.sum(1)
            if grad_c is not None:
                grad_c[:, :K] -= dr.sum(0)
                grad_c[:, K:] -= di.sum(0)
            if table_grad is not None:
                rows = torch.cat([dr, di], -1).neg_().reshape(-1, cand.shape[1])
                table_grad.add(slice(s, s + ctx.chunk), rows)
        if table_grad is not None:
            grad_c = table_grad.result()
        return grad_q, grad_c, None, None, None


def _chunk(candidates: int, dim: int, element_size: int) -> int:
    per_row = max(1, candidates * dim * element_size)
    return max(1, CHUNK_BYTES_PER_THREAD * torch.get_num_threads() // per_row)


#: Rows per chunk below which many candidates (all entities, in evaluation) are split into slices.
_MIN_ROWS = 8


def modulus_distances(q_BD: Tensor, cand_CD: Tensor, chunk: int | None = None) -> Tensor:
    """``(B, C)`` sums over complex coordinates of ``|q[b] - cand[c]|``; gradients to both."""
    row_bytes = cand_CD.shape[1] * cand_CD.element_size()
    cols = max(1, CHUNK_BYTES_PER_THREAD * torch.get_num_threads() // (_MIN_ROWS * row_bytes))
    if chunk is None and len(cand_CD) > cols:  # many candidates: slices of them, each in chunks of rows
        return torch.cat([modulus_distances(q_BD, part) for part in cand_CD.split(cols)], dim=1)
    chunk = chunk or _chunk(len(cand_CD), cand_CD.shape[1], cand_CD.element_size())
    return _ModulusDistance.apply(q_BD, cand_CD, None, int(chunk), False)


def gathered_modulus_distances(
    q_BD: Tensor, table: Tensor, idx_BC: Tensor, chunk: int | None = None, sparse_grad: bool = False
) -> Tensor:
    """``(B, C)`` sums of ``|q[b] - table[idx[b, c]]|``; gradients to ``q`` and ``table`` (a sparse
    one with ``sparse_grad``: `kelm.train.sparse_grads`)."""
    chunk = chunk or _chunk(idx_BC.shape[1], table.shape[1], table.element_size())
    return _ModulusDistance.apply(q_BD, table, idx_BC, int(chunk), sparse_grad)


__all__ = ["gathered_modulus_distances", "modulus_distances"]
