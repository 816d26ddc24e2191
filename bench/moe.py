"""Sparse MoE layer speed on CPU: kelm vs a dense SwiGLU FFN with the same active parameters and
vs the Hugging Face Mixtral sparse MoE block (same weights, its fastest experts backend).

Layer: 8 SwiGLU experts of width 1536 on hidden 384, top-2, 4,096 tokens, forward + backward.
The dense FFN has width 3,072 (= 2 active experts x 1536), so both do the same matmul FLOPs.
Each candidate runs in interleaved rounds; the minimum time per candidate is kept.

    python bench/moe.py [--json] [--tokens 4096] [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402

from kelm.moe import MoEConfig, MoELayer  # noqa: E402

D, FF, E, K = 384, 1536, 8, 2


class DenseSwiGLU(nn.Module):
    def __init__(self, d: int, f: int):
        super().__init__()
        self.w_gate_up = nn.Parameter(torch.randn(d, 2 * f) * 0.02)
        self.w_down = nn.Parameter(torch.randn(f, d) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = (x @ self.w_gate_up).chunk(2, dim=-1)
        return (F.silu(g) * u) @ self.w_down


def hf_block(layer: MoELayer, impl: str) -> nn.Module:
    """Mixtral's sparse MoE block holding ``layer``'s weights."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(
        hidden_size=D, intermediate_size=FF, num_local_experts=E, num_experts_per_tok=K, router_jitter_noise=0.0
    )
    cfg._experts_implementation = impl
    block = MixtralSparseMoeBlock(cfg)
    with torch.no_grad():
        block.gate.weight.copy_(layer.router.weight)
        block.experts.gate_up_proj.copy_(layer.experts.w_gate_up.transpose(1, 2))  # (E, 2F, D): gate then up
        block.experts.down_proj.copy_(layer.experts.w_down.transpose(1, 2))  # (E, D, F)
    return block


def step_fn(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        module.zero_grad(set_to_none=True)
        xi = x.detach().requires_grad_()
        module(xi).backward(grad)

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    moe = MoELayer(MoEConfig(d_model=D, d_ff=FF, n_experts=E, top_k=K, aux_loss_coef=0.0, z_loss_coef=0.0))
    moe.eval()  # the layer alone: no router statistics or auxiliary loss
    dense = DenseSwiGLU(D, K * FF)
    x = torch.randn(1, args.tokens, D)
    grad = torch.randn_like(x)

    # HF: every experts backend this transformers offers on CPU, checked against kelm's output
    with torch.no_grad():
        ref = moe(x)
    hf: dict[str, nn.Module] = {}
    hf_err: dict[str, float] = {}
    for impl in ("eager", "batched_mm", "grouped_mm"):
        try:
            block = hf_block(moe, impl)
            with torch.no_grad():
                out = block(x)
        except Exception as err:  # a backend may not run on this machine
            print(f"# transformers experts backend {impl!r} skipped: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        hf_err[impl] = float((out - ref).abs().max())
        hf[impl] = block

    candidates = {"moe": step_fn(moe, x, grad), "dense": step_fn(dense, x, grad)}
    candidates.update({f"hf_{k}": step_fn(m, x, grad) for k, m in hf.items()})
    best = dict.fromkeys(candidates, float("inf"))
    for fn in candidates.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    ms = {k: v * 1e3 for k, v in best.items()}
    hf_ms = {k.removeprefix("hf_"): v for k, v in ms.items() if k.startswith("hf_")}
    fastest = min(hf_ms, key=hf_ms.__getitem__)
    results = {
        "tokens": args.tokens,
        "experts": E,
        "top_k": K,
        "hidden": D,
        "expert_ffn": FF,
        "dense_ffn": K * FF,
        "kelm_impl": moe.experts.last_impl,
        "moe_ms": round(ms["moe"], 2),
        "dense_ms": round(ms["dense"], 2),
        "hf_ms": round(hf_ms[fastest], 2),
        "hf_impl": fastest,
        "hf_all_ms": {k: round(v, 2) for k, v in hf_ms.items()},
        "hf_max_abs_diff": hf_err,
        "vs_dense": round(ms["moe"] / ms["dense"], 3),
        "vs_hf": round(ms["moe"] / hf_ms[fastest], 3),
    }
    emit("moe", results, args.json)


if __name__ == "__main__":
    main()
