"""Two CPU kernel facts the fine-tuning speed-ups rest on, at 1 thread.

- Softmax over the last dimension, forward and backward, on ``(16, 12, L, L)`` attention scores,
  plain and padded with ``-inf`` to 16 columns (`kelm.lm.speedups.softmax_last`).
- Matrix-product rate for MiniLM's shapes at a ~192-position batch (the floor a step is held to).

    python bench/cpu_kernels.py [--calls 500] [--json]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def mean_ms(fn: Callable[[], object], calls: int) -> float:
    for _ in range(20):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch
    from common import emit

    from kelm.lm.speedups import softmax_last

    torch.set_num_threads(1)
    softmax = {}
    for length in (6, 9, 12, 15, 16, 20, 28):
        x = torch.randn(16, 12, length, length, requires_grad=True)
        g = torch.randn_like(x)
        softmax[length] = {
            "plain_ms": round(mean_ms(lambda x=x, g=g: x.softmax(-1).backward(g), args.calls), 3),
            "padded_ms": round(mean_ms(lambda x=x, g=g: softmax_last(x).backward(g), args.calls), 3),
        }
    gemm = {}
    for m, k, n in ((192, 384, 1536), (192, 1536, 384), (192, 384, 384)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        gemm[f"{m}x{k}x{n}"] = round(2 * m * k * n / mean_ms(lambda a=a, b=b: a @ b, args.calls) / 1e6, 1)
    emit("cpu_kernels", {"softmax_fwd_bwd_by_length": softmax, "gemm_gflops": gemm}, args.json)


if __name__ == "__main__":
    main()
