"""Text-based KG completion (``text-kgc``): DDP throughput and UMLS ranking quality.

    HF_HUB_OFFLINE=1 python bench/text_kgc.py throughput [--model tiny-bert] [--batch-size 64]
        [--steps 30] [--max-length 32] [--json]
    HF_HUB_OFFLINE=1 python bench/text_kgc.py umls [--model minilm] [--batch-size 32]
        [--steps 40] [--max-length 32] [--lr 5e-5] [--inductive 0.2] [--threads 1] [--json]

``throughput``: the same global batch and number of steps with 1 process (2 torch threads, then
1 thread) and with 2 processes through `--nproc 2` (1 thread each, DDP, tails gathered across
ranks);
pairs/s = training (query, positive) pairs over the training loop's own seconds
(``loop_seconds`` in metrics.json: no start-up, evaluation or export). No evaluation.

``umls``: the bundled UMLS with entity descriptions; a transductive run on the standard split
and an inductive run (``--inductive``: that share of entities held out of training, see
`kelm.kgc.inductive`), each evaluated on the test split with the filtered ranker over all
135 entities (both sides). One process, ``--threads`` torch threads (default 1: on a shared
2-core machine two intra-op threads lose far more to waiting than they gain, see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import emit, train_run


def _config(args: argparse.Namespace, threads: int, **task: Any) -> dict[str, Any]:
    base = {"name": "text-kgc", "dataset": "umls", "model": args.model, "max_length": args.max_length}
    if args.model == "tiny-bert":
        base |= {"hidden_size": 64, "num_layers": 2, "num_heads": 2}
    train = {
        "strategy": "ddp",
        "batch_size": args.batch_size,
        "max_steps": args.steps,
        "lr": args.lr,
        "schedule": "constant",
        "log_every": max(1, args.steps // 4),
        "tensorboard": False,
        "threads": threads,
    }
    return {"task": base | task, "train": train}


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"model": args.model, "global_batch": args.batch_size, "steps": args.steps}
    with tempfile.TemporaryDirectory(prefix="kelm-kgc-") as tmp:
        for nproc, threads in ((1, 2), (1, 1), (2, 1)):
            cfg = _config(args, threads, valid_split="", test_split="")
            m = train_run(cfg, str(Path(tmp) / f"p{nproc}t{threads}"), nproc=nproc)
            out[f"nproc{nproc}_threads{threads}"] = {
                "pairs_per_second": round(m["tokens"] / m["loop_seconds"], 1),
                "loop_seconds": round(m["loop_seconds"], 1),
                "final_train_loss": round(m["final_train_loss"], 4),
            }
    rate = {k: v["pairs_per_second"] for k, v in out.items() if k.startswith("nproc")}
    out["speedup_vs_1x2"] = round(rate["nproc2_threads1"] / rate["nproc1_threads2"], 2)
    out["speedup_vs_1x1"] = round(rate["nproc2_threads1"] / rate["nproc1_threads1"], 2)
    return out


def umls(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"model": args.model, "batch_size": args.batch_size, "steps": args.steps, "lr": args.lr}
    with tempfile.TemporaryDirectory(prefix="kelm-kgc-") as tmp:
        for name, extra in (("transductive", {}), ("inductive", {"inductive": args.inductive})):
            t0 = time.perf_counter()
            m = train_run(_config(args, args.threads, valid_split="", **extra), str(Path(tmp) / name))
            test = m["test"]
            out[name] = {
                "mrr": round(test["mrr"], 4),
                "hits@1": round(test["hits@1"], 4),
                "hits@10": round(test["hits@10"], 4),
                "train_loop_seconds": round(m["loop_seconds"], 1),
                "wall_seconds": round(time.perf_counter() - t0, 1),
            }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("throughput", "umls"))
    p.add_argument("--model", default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="training steps per run")
    p.add_argument("--max-length", type=int, default=32)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--inductive", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the umls runs")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    defaults = {"throughput": ("tiny-bert", 64, 30, 1e-3), "umls": ("minilm", 32, 40, 5e-5)}[args.part]
    for key, value in zip(("model", "batch_size", "steps", "lr"), defaults, strict=True):
        if getattr(args, key) is None:
            setattr(args, key, value)
    results = throughput(args) if args.part == "throughput" else umls(args)
    emit(f"text_kgc_{args.part}", results, args.json)


if __name__ == "__main__":
    main()
