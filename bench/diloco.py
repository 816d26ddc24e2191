"""DDP vs DiLoCo (H = 50) on a small byte-level language model with 2 processes.

    python bench/diloco.py [--steps 1000] [--json]

Both runs see the same data (global batch 32 windows of 64 bytes, split over 2 ranks), model
(GPT: d_model 128, 2 layers, 4 heads), schedule and step count. DDP all-reduces fp32 gradients
every step; DiLoCo all-gathers an int8 pseudo-gradient (blockwise scales, error feedback) every
H steps. Bytes are the payloads the ranks hand to collectives, summed over ranks, as counted by
kelm.train.comm; DDP's initial parameter broadcast is not counted, and DiLoCo's
(one fp32 copy of the parameters) is not either: both are set-up, outside the timed loop.
The outer optimizer is Nesterov SGD with lr 1.0 and momentum 0.5 (kelm's defaults, 0.7 / 0.9
from the DiLoCo paper, were tuned for H = 500 on large models and trail DDP here).
"""

from __future__ import annotations

import argparse
import tempfile

from common import bundled_text, emit, train_run


def config(strategy: str, steps: int, **extra: object) -> dict:
    return {
        "task": {
            "name": "causal-lm",
            "text": [bundled_text()],
            "seq_len": 64,
            "d_model": 128,
            "n_layer": 2,
            "n_head": 4,
        },
        "train": {
            "strategy": strategy,
            "max_steps": steps,
            "batch_size": 32,
            "lr": 1e-3,
            "warmup_steps": 50,
            "schedule": "cosine",
            "min_lr_ratio": 0.1,
            "log_every": 50,
            "threads": 1,
            "tensorboard": False,
            **extra,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--outer-lr", type=float, default=1.0)
    ap.add_argument("--outer-momentum", type=float, default=0.5)
    ap.add_argument("--h", type=int, default=50)
    ap.add_argument("--compression", default="int8", choices=["none", "bf16", "int8"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ddp = train_run(config("ddp", args.steps), f"{tmp}/ddp", nproc=2)
        dil = train_run(
            config(
                "diloco",
                args.steps,
                diloco_h=args.h,
                diloco_compression=args.compression,
                outer_lr=args.outer_lr,
                outer_momentum=args.outer_momentum,
            ),
            f"{tmp}/diloco",
            nproc=2,
        )
    results = {
        "steps": args.steps,
        "H": args.h,
        "compression": args.compression,
        "ddp": {k: ddp[k] for k in ("bytes_communicated", "wall_seconds", "tokens_per_second")}
        | {"valid_loss": ddp["valid"]["loss"]},
        "diloco": {k: dil[k] for k in ("bytes_communicated", "wall_seconds", "tokens_per_second")}
        | {"valid_loss": dil["valid"]["loss"]},
        "bytes_ratio_ddp_over_diloco": round(ddp["bytes_communicated"] / dil["bytes_communicated"], 1),
        "valid_loss_gap_pct": round(100 * (dil["valid"]["loss"] / ddp["valid"]["loss"] - 1), 2),
    }
    emit("diloco", results, args.json)


if __name__ == "__main__":
    main()
