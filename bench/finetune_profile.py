"""Where a fine-tuning step goes: MiniLM on poem-sentiment, per phase and per operator.

Builds the task, model and optimizer the way `kelm.train.Trainer` does (``configure`` included,
so the exact speed-ups are on unless named in ``--off``), runs ``--warmup`` steps, then times
``--steps`` steps by phase (forward, backward, clipping, optimizer, zero_grad) and profiles them
with `torch.profiler`. Same settings as `bench/finetune_vs_hf.py` (batch 16, lr 1e-4, clipping 1.0,
no weight decay, 1 thread).

    python bench/finetune_profile.py [--steps 40] [--off compact_vocab,short_row_attention] [--json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--off", default="", help="comma-separated speed-ups to turn off (see finetune_vs_hf.SPEEDUPS)")
    parser.add_argument("--ops", type=int, default=12, help="operators to list")
    parser.add_argument("--data-dir", default=os.environ.get("KELM_DATA_DIR"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from common import emit
    from finetune_vs_hf import SPEEDUPS, task_table
    from torch.profiler import profile

    from kelm.tasks import build_task
    from kelm.train import clipping
    from kelm.train.config import TrainConfig
    from kelm.train.data import ShardedBatches
    from kelm.train.trainer import build_optimizer, seed_everything

    off = [x for x in args.off.split(",") if x]
    if set(off) - set(SPEEDUPS):
        sys.exit(f"--off: known speed-ups are {', '.join(SPEEDUPS)}")
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(strategy="single", lr=1e-4, weight_decay=0.0, clip_grad_norm=1.0, threads=args.threads)
    task = build_task(task_table(args.data_dir) | dict.fromkeys(off, False))
    task.configure(cfg)
    seed_everything(cfg.seed)
    model = task.build_model().train()
    optimizer = build_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    batches = list(ShardedBatches(task.train_data(), task.collate, 16, 0, 1, cfg.seed))
    need = args.warmup + 2 * args.steps
    batches = (batches * (need // len(batches) + 1))[:need]

    phases = dict.fromkeys(("forward", "backward", "clip", "optimizer", "zero_grad"), 0.0)

    def step(batch: dict, timed: bool) -> None:
        t0 = time.perf_counter()
        loss, _ = task.loss(model, batch)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        clipping.clip_gradients(optimizer, model.parameters(), norm, cfg.clip_grad_norm)
        t3 = time.perf_counter()
        optimizer.step()
        clipping.after_step(optimizer)
        t4 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        if timed:
            for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                phases[name] += dt

    for b in batches[: args.warmup]:
        step(b, False)
    tokens = 0
    for b in batches[args.warmup : args.warmup + args.steps]:
        step(b, True)
        tokens += task.tokens(b)
    with profile() as prof:
        for b in batches[args.warmup + args.steps :]:
            step(b, False)
    total = sum(phases.values())
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[: args.ops]
    result = {
        "speedups_off": off,
        "trained_vocabulary_rows": int(model.get_input_embeddings().weight.shape[0]),
        "ms_per_step": {k: round(v / args.steps * 1e3, 2) for k, v in (phases | {"total": total}).items()},
        "tokens_per_second": tokens / total,
        "profile_ms_per_step": {e.key: round(e.self_cpu_time_total / 1e3 / args.steps, 2) for e in ops},
        "settings": vars(args) | {"data_dir": None},
    }
    emit("finetune_profile", result, args.json)


if __name__ == "__main__":
    main()
