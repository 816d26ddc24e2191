"""RotatE's negative-sampling distances, forward and backward: kelm's chunked kernel against autograd
through broadcasting, at the RotatE paper's shapes.

    python bench/rotate_distance.py [--threads 1] [--repeats 3] [--json]

Shapes (rows B, negatives N, real dimensions D, entities E): WN18RR 512 x 1024 x 1000 over 40,943
entities, FB15k-237 1024 x 256 x 2000 over 14,541; negatives shared by the batch or drawn per row.
Each case times ``distances(q, candidates).backward()``: the scores and both gradients (queries
and entity table). Reports seconds per call, the ratio, and the kernel's rate in complex
coordinates per second. Broadcasting needs several ``(B, N, D/2)`` tensors; a case whose
intermediates would exceed ``--max-gib`` skips that side.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from common import emit
from torch import Tensor

from kelm.kge.modulus_distance import gathered_modulus_distances, modulus_distances

CASES = {
    "wn18rr": (512, 1024, 1000, 40943),
    "fb15k-237": (1024, 256, 2000, 14541),
}


def broadcast(q: Tensor, cand: Tensor) -> Tensor:
    """The plain autograd formula (what `RotatE.interact` does)."""
    K = q.shape[-1] // 2
    d = q[:, None] - (cand if cand.dim() == 3 else cand[None])
    return (d[..., :K].square() + d[..., K:].square()).clamp_min(1e-18).sqrt().sum(-1)


def cases(q: Tensor, table: Tensor, idx: Tensor) -> tuple[Callable[[], Tensor], Callable[[], Tensor]]:
    """kelm's kernel and plain broadcasting over the same candidates (shared ``idx (N,)`` or per row)."""

    def fused() -> Tensor:
        if idx.dim() == 1:
            return modulus_distances(q, table[idx])
        return gathered_modulus_distances(q, table, idx)

    return fused, lambda: broadcast(q, table[idx])


def seconds(fn: Callable[[], Tensor], repeats: int) -> float:
    fn().sum().backward()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn().sum().backward()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-gib", type=float, default=6.0, help="skip broadcasting above this much memory")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name, (B, N, D, E) in CASES.items():
        table = torch.randn(E, D).mul_(D**-0.5).requires_grad_()
        q = torch.randn(B, D).mul_(D**-0.5).requires_grad_()
        for kind in ("shared", "per-row"):
            idx = torch.randint(E, (N,)) if kind == "shared" else torch.randint(E, (B, N))
            fused, plain = cases(q, table, idx)
            coords = B * N * D // 2
            t_fused = seconds(fused, args.repeats)
            gib = 6 * coords * 4 / 2**30  # differences, squares, moduli and their gradients
            t_plain = seconds(plain, args.repeats) if gib <= args.max_gib else None
            rows.append(
                {
                    "case": f"{name} {kind}",
                    "shape": [B, N, D, E],
                    "kelm_s": round(t_fused, 3),
                    "broadcast_s": None if t_plain is None else round(t_plain, 3),
                    "speedup": None if t_plain is None else round(t_plain / t_fused, 2),
                    "kelm_coords_per_s": f"{coords / t_fused:.3g}",
                }
            )
    emit("rotate_distance", {"rows": rows}, args.json)


if __name__ == "__main__":
    main()
