"""Pretraining configs trained to the end: held-out perplexity at the start, at the end, and of a unigram model.

For each config (``configs/lm/tiny-bert-mlm.toml``, ``configs/lm/tiny-gpt2-clm.toml``) the run is
the one ``kelm pretrain CONFIG`` makes. Before it, the same freshly initialised model (same seed)
is evaluated on the held-out blocks, and an add-one unigram model of the training blocks is scored
on the same held-out predictions (the masked tokens for MLM, every next token for CLM).

    python bench/pretrain_lm.py configs/lm/tiny-bert-mlm.toml configs/lm/tiny-gpt2-clm.toml [--json]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def unigram_perplexity(task: Any, eval_set: list[dict[str, torch.Tensor]]) -> float:
    """Perplexity of add-one unigram frequencies of the training blocks on the held-out targets."""
    from kelm.tasks.pretrain import IGNORE

    train = task.train_data()
    first, count = train.first, len(train)
    tokens = train.tokens[first * train.size : (first + count) * train.size].to(torch.int64)
    counts = torch.bincount(tokens, minlength=len(task.tokenizer)).double() + 1.0
    logp = (counts / counts.sum()).log()
    nll, n = 0.0, 0
    for batch in eval_set:
        if "labels" in batch:
            targets = batch["labels"][batch["labels"] != IGNORE]
        else:
            targets = batch["input_ids"][:, 1:].flatten()
        nll -= float(logp[targets].sum())
        n += targets.numel()
    return math.exp(nll / n)


def measure(config: Path) -> dict[str, Any]:
    from kelm.app import run_training
    from kelm.app.run import load_run_config
    from kelm.train.data import eval_batches
    from kelm.train.trainer import seed_everything

    run = load_run_config(config)
    cfg = run.config.train
    torch.set_num_threads(cfg.threads or 1)
    task = run.build_task()
    eval_set = eval_batches(task.eval_data(), task.collate, cfg.eval_batch_size or cfg.batch_size, 0, 1)
    seed_everything(cfg.seed)  # as the trainer does before building the model: the run's own start
    model = task.build_model().eval()
    start = task.finalize_metrics(task.evaluate(model, eval_set))
    del model
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = run_training(run, Path(tmp) / "run")
        seconds = time.perf_counter() - t0
    n_train, n_valid = len(task.train_data()), len(task.eval_data())
    return {
        "task": task.name,
        "model": task.cfg.model_name,
        "corpus_tokens": len(task.stream),
        "blocks": {"train": n_train, "held_out": n_valid, "size": task.cfg.block_size},
        "steps": summary["steps"],
        "epochs_seen": summary["steps"] * cfg.batch_size / n_train,
        "unigram_perplexity": unigram_perplexity(task, eval_set),
        "start_perplexity": start["perplexity"],
        "end_perplexity": summary["valid"]["perplexity"],
        "final_train_loss": summary["final_train_loss"],
        "loop_seconds": summary["loop_seconds"],
        "loop_cpu_seconds": summary["loop_cpu_seconds"],
        "run_seconds": seconds,
        "threads": cfg.threads,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("KELM_PROGRESS", "0")
    from common import emit

    results = {str(c): measure(c) for c in args.configs}
    emit("pretrain_lm", {"runs": results}, args.json)


if __name__ == "__main__":
    main()
