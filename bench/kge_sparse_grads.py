"""A KGE training step with row-sparse table gradients (kelm's default) against PyTorch's dense ones.

    KELM_DATA_DIR=../shared/data python bench/kge_sparse_grads.py --dataset wn18rr --model rotate \
        --dim 1000 --negatives 256 --sampler shared --batch-size 512 --threads 1 --json

Both variants are the same model (`kelm.train.sparse_grads.dense_embedding_grads` turns the sparse
lookups back into dense ones) trained with Adam on the same batches; each step is timed in three
parts (forward, backward, optimizer), interleaved over repeats, and the best repeat is kept.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from kelm.tasks.link_prediction import LinkPredictionConfig, LinkPredictionTask
from kelm.train.sparse_grads import dense_embedding_grads


def timed_steps(task: LinkPredictionTask, model: torch.nn.Module, batches: list, opt: torch.optim.Optimizer) -> dict:
    parts = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    for batch in batches:
        t0 = time.perf_counter()
        loss, _ = task.loss(model, batch)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        parts["forward"] += t1 - t0
        parts["backward"] += t2 - t1
        parts["optimizer"] += t3 - t2
    return {k: v / len(batches) for k, v in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="wn18rr")
    ap.add_argument("--model", default="rotate")
    ap.add_argument("--dim", type=int, default=1000)
    ap.add_argument("--negatives", type=int, default=256)
    ap.add_argument("--sampler", default="shared")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = LinkPredictionConfig(
        dataset=args.dataset,
        model=args.model,
        dim=args.dim,
        training="negative-sampling",
        sampler=args.sampler,
        num_negatives=args.negatives,
        loss="ce",
        reciprocal=True,
    )
    task = LinkPredictionTask(cfg)
    data = task.train_data()
    B = args.batch_size
    batches = [task.collate([data[j] for j in range(i * B, (i + 1) * B)]) for i in range(args.steps + 1)]
    variants: dict[str, Any] = {}
    for name in ("row-sparse", "dense"):
        torch.manual_seed(0)
        model = task.build_model()
        if name == "dense":
            dense_embedding_grads(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        timed_steps(task, model, batches[:1], opt)  # warm-up: buffers and optimizer state
        variants[name] = (model, opt)
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for name, (model, opt) in variants.items():
            parts = timed_steps(task, model, batches[1:], opt)
            total = sum(parts.values())
            if name not in best or total < sum(best[name].values()):
                best[name] = parts
    row = {
        "shape": vars(args),
        "entities": task.tensors.num_entities,
        **{name: {k: round(v, 4) for k, v in parts.items()} for name, parts in best.items()},
    }
    row["speed_up"] = round(sum(best["dense"].values()) / sum(best["row-sparse"].values()), 2)
    if args.json:
        print(json.dumps(row))
    else:
        for name, parts in best.items():
            print(f"{name:10s} " + " ".join(f"{k} {v:.3f} s" for k, v in parts.items()))
        print(f"speed-up {row['speed_up']}x")


if __name__ == "__main__":
    main()
