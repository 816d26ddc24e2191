"""Fine-tuning MiniLM-L6 on poem-sentiment: kelm's engine vs the Hugging Face `Trainer`.

Both sides get the same model, tokenized data (max 128 tokens, the 'mixed' label 2 left out of
training), epochs, batch size, learning rate, linear schedule with the same warmup, gradient
clipping at 1.0, no weight decay, seed and thread count, and each runs in its own process.

- kelm: `kelm.app.run_training` with dynamic padding and length-grouped batches (its default).
  Its time is the engine's `loop_seconds` (the training loop alone, like HF's `train()`); the
  run's `wall_seconds`, which adds the final dev evaluation, checkpoint and export, is also given.
  "kelm-plain" is the same run with its exact speed-ups off (row-sparse embedding gradients,
  last layer at the [CLS] position only, short attention rows on the fast softmax kernel, and
  training only the vocabulary rows the data uses; `kelm.lm.speedups`, `kelm.lm.compact_vocab`).
- HF: `Trainer.train()` with `DataCollatorWithPadding` (each batch padded to its own longest
  sequence), once with random batches and once grouped by length
  (`train_sampling_strategy="group_by_length"`, formerly `group_by_length=True`), with its
  default fused AdamW. Its time is `train()` alone; dev metrics come from a separate pass
  afterwards. ``--bf16`` gives both sides bf16 autocast (kelm ``amp="bf16"``, HF ``bf16=True``).

Rates are the fastest of ``--repeats`` interleaved rounds, in wall-clock time and in the
process's CPU time over the same span (steadier when other work shares the machine).
Tokens are non-pad tokens actually trained on (kelm drops the last partial batch of an epoch,
the Trainer does not); "padded" counts every position the model computed, padding included.

    python bench/finetune_vs_hf.py [--epochs 3] [--threads 1] [--repeats 3] [--bf16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

MAX_LENGTH = 128
DROP = "2"
#: kelm's exact speed-ups (`kelm.lm.speedups`, `kelm.lm.compact_vocab`), all off for "kelm-plain"
SPEEDUPS = ("sparse_embedding_grads", "first_token_last_layer", "compact_vocab", "short_row_attention")


def task_table(data_dir: str | None) -> dict[str, Any]:
    """poem-sentiment's train and dev files (no test file: the run evaluates dev once, at the end)."""
    from kelm.data import resolve

    folder = resolve("poem-sentiment", data_dir=data_dir)
    return {
        "name": "classification",
        "train": str(folder / "train.tsv"),
        "dev": str(folder / "dev.tsv"),
        "model": "minilm",
        "drop_labels": [DROP],
        "max_length": MAX_LENGTH,
    }


def run_kelm(args: argparse.Namespace, plain: bool = False) -> dict[str, Any]:
    from kelm.app import run_training
    from kelm.tasks import build_task
    from kelm.train.data import ShardedBatches

    train = {
        "strategy": "single",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "schedule": "linear",
        "warmup_steps": args.warmup,
        "weight_decay": 0.0,
        "clip_grad_norm": 1.0,
        "seed": args.seed,
        "threads": args.threads,
        "tensorboard": False,
        "log_every": 1000,
        "amp": "bf16" if args.bf16 else "off",
    }
    table = task_table(args.data_dir)
    if plain:  # without the exact speed-ups, to show what they bring
        table |= {key: False for key in SPEEDUPS}
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_training({"task": table, "train": train}, tmp)
    # padded positions of the same batches (same seed, same order), without the model
    task = build_task(table)
    loader = ShardedBatches(task.train_data(), task.collate, args.batch_size, 0, 1, args.seed)
    padded = 0
    for _ in range(args.epochs):
        padded += sum(int(b["input_ids"].numel()) for b in loader)
    return {
        "seconds": summary["loop_seconds"],
        "cpu_seconds": summary["loop_cpu_seconds"],
        "wall_seconds": summary["wall_seconds"],
        "tokens": summary["tokens"],
        "padded_tokens": padded,
        "steps": summary["steps"],
        "dev_accuracy": summary["valid"]["accuracy"],
        "dev_macro_f1": summary["valid"]["macro_f1"],
    }


def run_hf(args: argparse.Namespace, group_by_length: bool) -> dict[str, Any]:
    import torch
    from sklearn.metrics import f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from kelm.data import resolve
    from kelm.lm.checkpoints import minilm_path
    from kelm.tasks.classification import read_tsv

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    folder = resolve("poem-sentiment", data_dir=args.data_dir)
    train_rows = [r for r in read_tsv(folder / "train.tsv") if r[1] != DROP][: args.limit]
    dev_rows = read_tsv(folder / "dev.tsv")
    labels = sorted({r[1] for r in train_rows}, key=float)
    index = {label: i for i, label in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(minilm_path())

    def encode(rows: list[tuple[str, str, int]]) -> list[dict[str, Any]]:
        enc = tok([r[0] for r in rows], truncation=True, max_length=MAX_LENGTH)
        return [{k: enc[k][i] for k in enc} | {"labels": index[r[1]]} for i, r in enumerate(rows)]

    train, dev = encode(train_rows), encode(dev_rows)
    counts = {"tokens": 0, "padded_tokens": 0}
    pad = DataCollatorWithPadding(tok)

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = pad(features)
        counts["tokens"] += int(batch["attention_mask"].sum())
        counts["padded_tokens"] += int(batch["input_ids"].numel())
        return batch

    torch.manual_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path(), num_labels=len(labels), id2label=dict(enumerate(labels))
    )
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=args.epochs,
            learning_rate=args.lr,
            lr_scheduler_type="linear",
            warmup_steps=args.warmup,
            weight_decay=0.0,
            max_grad_norm=1.0,
            seed=args.seed,
            train_sampling_strategy="group_by_length" if group_by_length else "random",
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            use_cpu=True,
            dataloader_num_workers=0,
            bf16=args.bf16,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=train, data_collator=collate)
        t0, cpu0 = time.perf_counter(), time.process_time()
        out = trainer.train()
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    model.eval()
    gold, pred = [], []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        for lo in range(0, len(dev), 64):
            batch = pad([{k: v for k, v in f.items() if k != "labels"} for f in dev[lo : lo + 64]])
            pred += model(**batch).logits.argmax(-1).tolist()
            gold += [f["labels"] for f in dev[lo : lo + 64]]
    accuracy = sum(g == p for g, p in zip(gold, pred, strict=True)) / len(gold)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "tokens": counts["tokens"],
        "padded_tokens": counts["padded_tokens"],
        "steps": out.global_step,
        "dev_accuracy": accuracy,
        "dev_macro_f1": float(f1_score(gold, pred, average="macro")),
    }


SYSTEMS = ("kelm", "kelm-plain", "hf", "hf-group-by-length")


def child(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("KELM_PROGRESS", "0")
    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    if args.only.startswith("kelm"):
        result = run_kelm(args, plain=args.only == "kelm-plain")
    else:
        result = run_hf(args, group_by_length=args.only == "hf-group-by-length")
    result["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # other work on the machine
    result["tokens_per_second"] = result["tokens"] / result["seconds"]
    result["tokens_per_cpu_second"] = result["tokens"] / result["cpu_seconds"]
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (HF: bf16=True)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; each system's fastest counts")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ", ".join(SYSTEMS))
    parser.add_argument("--data-dir", default=os.environ.get("KELM_DATA_DIR"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)  # HF smoke tests only
    args = parser.parse_args()
    if args.only:
        child(args)
        return
    from common import emit

    systems = [x for x in args.systems.split(",") if x]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown or "kelm" not in systems:
        sys.exit(f"--systems: need kelm and known names ({', '.join(SYSTEMS)}); got {args.systems}")
    passed = ("json", "only", "repeats", "systems")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    t0 = time.perf_counter()
    for _ in range(args.repeats):  # interleaved, so a busy spell on a shared machine hits every system
        for system in systems:
            cmd = [sys.executable, __file__, "--only", system] + [
                f"--{k.replace('_', '-')}={v}"
                for k, v in vars(args).items()
                if k not in passed and v is not None and v is not False
            ]
            cmd = [c.removesuffix("=True") for c in cmd]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.exit(f"{system} failed:\n{proc.stderr[-3000:]}")
            runs[system].append(json.loads(line[len("RESULT ") :]))
            print(f"{system}: {json.dumps(runs[system][-1])}", file=sys.stderr, flush=True)  # progress
    results: dict[str, Any] = {}
    for system, rs in runs.items():
        best = min(rs, key=lambda r: r["seconds"])
        results[system] = best | {
            "seconds_all": [round(r["seconds"], 2) for r in rs],
            "cpu_seconds_all": [round(r["cpu_seconds"], 2) for r in rs],
            "tokens_per_cpu_second": max(r["tokens_per_cpu_second"] for r in rs),
        }
    for rate in ("tokens_per_second", "tokens_per_cpu_second"):
        k = results["kelm"][rate]
        results[f"ratio_{rate}"] = {f"kelm/{x}": k / results[x][rate] for x in systems if x != "kelm"}
    results["settings"] = {kk: v for kk, v in vars(args).items() if kk not in ("json", "only", "data_dir")}
    results["settings"]["max_length"] = MAX_LENGTH
    results["total_seconds"] = time.perf_counter() - t0
    emit("finetune_vs_hf", results, args.json)


if __name__ == "__main__":
    main()
