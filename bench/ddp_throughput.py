"""DDP with 2 processes vs 1 process on this machine: training tokens per second.

    python bench/ddp_throughput.py [--steps 150] [--json]

Same small byte-level GPT (d_model 256, 4 layers), same global batch (32 x 128 bytes), same
steps. The single process uses `--threads` intra-op threads (default: all cores); each DDP
process uses `cores / 2` threads, so both configurations use every core once.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from common import bundled_text, emit, train_run


def config(strategy: str, steps: int, threads: int) -> dict:
    return {
        "task": {
            "name": "causal-lm",
            "text": [bundled_text()],
            "seq_len": 128,
            "d_model": 256,
            "n_layer": 4,
            "n_head": 4,
        },
        "train": {
            "strategy": strategy,
            "max_steps": steps,
            "batch_size": 32,
            "lr": 1e-3,
            "log_every": 50,
            "threads": threads,
            "tensorboard": False,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    per_proc = max(1, args.threads // 2)
    with tempfile.TemporaryDirectory() as tmp:
        one = train_run(config("single", args.steps, args.threads), f"{tmp}/one")
        two = train_run(config("ddp", args.steps, per_proc), f"{tmp}/two", nproc=2)
    results = {
        "steps": args.steps,
        "single": {
            "threads": args.threads,
            "tokens_per_second": round(one["tokens_per_second"]),
            "wall_seconds": round(one["wall_seconds"], 2),
            "valid_loss": one["valid"]["loss"],
        },
        "ddp_2proc": {
            "threads_per_process": per_proc,
            "tokens_per_second": round(two["tokens_per_second"]),
            "wall_seconds": round(two["wall_seconds"], 2),
            "valid_loss": two["valid"]["loss"],
        },
        "speedup": round(two["tokens_per_second"] / one["tokens_per_second"], 3),
    }
    emit("ddp_throughput", results, args.json)


if __name__ == "__main__":
    main()
