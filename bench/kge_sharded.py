"""A sharded entity table on a synthetic planted graph: edges/s and filtered MRR.

    python bench/kge_sharded.py [--entities 1000000] [--edges 10000000] [--nproc 2] [--dim 64]
        [--epochs 1] [--batch-size 8192] [--negatives 100] [--sampler shared] [--lr 0.01]
        [--eval-triples 1000] [--out /tmp/kelm-kge-sharded] [--json]

The graph: entities fall in clusters of ``--cluster-size`` laid out on a ring; each relation
shifts every cluster by its own random offset around the ring (a rotation, which ComplEx and
RotatE can represent exactly: cluster ``c`` as phases ``2 pi c k / K``), and an edge ``(h, r, t)`` takes
``h`` uniformly and ``t`` uniformly from the cluster ``r`` maps ``h``'s cluster to, or, with
probability ``--noise``, uniformly from all entities. A model can only learn the clusters, so an
ideal filtered rank is uniform over the target cluster: MRR about ``H(S) / S`` for clusters of
``S`` (0.09 for the default S = 50; ``ideal_mrr`` in the output). Valid and test are
``--eval-triples`` edges each, drawn the same way.

It trains through the CLI exactly as a user would: ``kelm kge train CONFIG --nproc N`` with
``[task] shard_entities = true`` (negative sampling, reciprocal relations, ``--negatives``
negatives per row shared by the batch as PBG shares them, Adam), one thread per process.
edges/s is training edges x epochs over the training loop's seconds (``loop_seconds``
of metrics.json: no data loading, final evaluation or export); with reciprocal relations each
edge is trained in both directions, as PBG trains both sides of each edge. MRR is the filtered
test MRR over all entities (head and tail queries; every generated edge filtered).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tomli_w
from common import emit


def planted_graph(entities: int, edges: int, relations: int, cluster: int, noise: float, seed: int) -> np.ndarray:
    """``(edges, 3)`` int64 triples of the planted cluster graph (duplicates removed)."""
    rng = np.random.default_rng(seed)
    clusters = max(1, entities // cluster)
    shift = rng.integers(1, max(2, clusters), relations)  # relation r: cluster c -> c + shift[r] (mod K)
    h = rng.integers(0, entities, edges)
    r = rng.integers(0, relations, edges)
    target = (np.minimum(h // cluster, clusters - 1) + shift[r]) % clusters
    lo = target * cluster
    hi = np.where(target == clusters - 1, entities, lo + cluster)
    t = lo + (rng.random(edges) * (hi - lo)).astype(np.int64)
    noisy = rng.random(edges) < noise
    t[noisy] = rng.integers(0, entities, int(noisy.sum()))
    unique = np.unique(np.stack([h, r, t], 1), axis=0)
    return unique[rng.permutation(len(unique))]


def write_graph(folder: Path, triples: np.ndarray, held_out: int) -> dict[str, int]:
    """train/valid/test TSV files with ids ``e<N>`` and ``r<N>``; valid and test take ``held_out``
    edges each whose entities and relation also occur in train."""
    folder.mkdir(parents=True, exist_ok=True)
    rest, picked = triples[2 * held_out :], triples[: 2 * held_out]
    seen_e = np.zeros(int(triples[:, [0, 2]].max()) + 1, dtype=bool)
    seen_e[rest[:, 0]] = seen_e[rest[:, 2]] = True
    keep = seen_e[picked[:, 0]] & seen_e[picked[:, 2]]
    splits = {"valid": picked[keep][:held_out], "test": picked[keep][held_out:], "train": rest}
    splits["train"] = np.concatenate([rest, picked[~keep]])
    for name, rows in splits.items():
        lines = (f"e{h}\tr{r}\te{t}\n" for h, r, t in rows.tolist())
        (folder / f"{name}.txt").write_text("".join(lines), encoding="utf-8")
    return {name: len(rows) for name, rows in splits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entities", type=int, default=1_000_000)
    ap.add_argument("--edges", type=int, default=10_000_000)
    ap.add_argument("--relations", type=int, default=10)
    ap.add_argument("--cluster-size", type=int, default=50)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--model", default="complex")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--negatives", type=int, default=100)
    ap.add_argument("--sampler", default="shared", choices=["shared", "uniform"])
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--eval-triples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/kelm-kge-sharded")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    out = Path(args.out)
    data, run = out / "graph", out / "run"
    t0 = time.perf_counter()
    triples = planted_graph(args.entities, args.edges, args.relations, args.cluster_size, args.noise, args.seed)
    sizes = write_graph(data, triples, args.eval_triples)
    generate_seconds = time.perf_counter() - t0
    config = {
        "task": {
            "name": "link-prediction",
            "dataset": str(data),
            "model": args.model,
            "dim": args.dim,
            "training": "negative-sampling",
            "sampler": args.sampler,
            "num_negatives": args.negatives,
            "loss": "softplus",
            "shard_entities": args.nproc > 1,
            "eval_memory_mb": 512.0,
        },
        "train": {
            "strategy": "ddp",
            "threads": 1,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer": args.optimizer,
            "lr": args.lr,
            "schedule": "constant",
            "log_every": 50,
            "tensorboard": False,
            "seed": args.seed,
        },
    }
    cfg_file = out / "config.toml"
    cfg_file.write_text(tomli_w.dumps(config), encoding="utf-8")
    cmd = [sys.executable, "-m", "kelm.cli", "kge", "train", str(cfg_file), "--out", str(run)]
    cmd += ["--nproc", str(args.nproc)] if args.nproc > 1 else []
    if run.exists():
        subprocess.run(["rm", "-rf", str(run)], check=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "KELM_PROGRESS": "0", "OMP_NUM_THREADS": "1"})
    run_seconds = time.perf_counter() - t0
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    trained_edges = metrics["steps"] * args.batch_size // 2  # reciprocal rows: two per edge
    emit(
        "kge_sharded",
        {
            "args": vars(args),
            "splits": sizes,
            "generate_seconds": round(generate_seconds, 1),
            "run_seconds": round(run_seconds, 1),
            "loop_seconds": round(metrics["loop_seconds"], 1),
            "steps": metrics["steps"],
            "edges_per_second": round(trained_edges / metrics["loop_seconds"]),
            "rows_per_second": round(2 * trained_edges / metrics["loop_seconds"]),
            "test_mrr": round(metrics["test"]["mrr"], 4),
            "test_hits@10": round(metrics["test"]["hits@10"], 4),
            "ideal_mrr": round(sum(1 / k for k in range(1, args.cluster_size + 1)) / args.cluster_size, 4),
            "world_size": metrics["world_size"],
        },
        args.json,
    )


if __name__ == "__main__":
    main()
