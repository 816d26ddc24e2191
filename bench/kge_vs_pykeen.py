"""kelm vs PyKEEN: the same KGE model trained and evaluated side by side on one data set.

    KELM_DATA_DIR=../shared/data python bench/kge_vs_pykeen.py [--dataset umls] [--model complex]
        [--dim 256] [--epochs 30] [--batch-size 256] [--optimizer adam] [--lr 0.01]
        [--num-negatives 32] [--loss margin] [--threads 2] [--modes ns,1-n] [--repeats 3] [--json]

Both libraries see the same id-mapped triples: kelm loads the data set, numbers entities and
relations in sorted order, and PyKEEN's TriplesFactory is built from those very tensors
(``mapped_triples``, ``entity_to_id``, ``relation_to_id``), so splits and vocabularies agree.

Both sides learn both directions with reciprocal relations: kelm ``reciprocal = true`` (relation
``r + R`` is the inverse of ``r``), PyKEEN ``create_inverse_triples=True`` (the same thing: one
extra embedding per relation, head queries asked as tail queries of the inverse). Model: ComplEx
(default) or DistMult, no regularizer on either side (PyKEEN's default Lp regularizer is turned
off), ``--dim`` real parameters per embedding (PyKEEN ComplEx gets ``dim / 2`` complex numbers).
Both start from kelm's initialisation (every real coordinate ~ N(0, 1 / dim); PyKEEN gets it
as entity and relation initializer: its own defaults start with large scores and barely learn
in a few epochs). Optimizer and lr are the same (torch Adam or Adagrad); kelm runs with a
constant schedule, no gradient clipping, no AMP, and no evaluation during training; PyKEEN's
training loops run with ``automatic_memory_optimization=False`` (on CPU its batch-size search
would only add trial steps).

Modes:
  ns   kelm ``training = "negative-sampling"``, uniform sampler, ``--num-negatives`` corrupted
       tails per triple, vs PyKEEN sLCWA with BasicNegativeSampler(corruption_scheme=("tail",)).
       Loss ``margin`` (default): mean of relu(margin - pos + neg) over all (triple, negative)
       pairs on both sides (PyKEEN MarginRankingLoss, identical formula); ``softplus`` is also
       offered but weights differently (kelm: softplus(-pos) + mean softplus(neg) per triple;
       PyKEEN: mean over all B * (N + 1) pointwise terms). PyKEEN never draws the true entity
       as its own negative; kelm may (probability 1 / E per draw).
  1-n  kelm ``training = "1-n"`` with the cross-entropy loss (target spread evenly over a
       query's true answers) vs PyKEEN LCWA with CrossEntropyLoss (the same formula), over the
       same unique (entity, relation) queries.

Evaluation, timed apart from training: filtered realistic ranks of the test split, head and
tail queries, filtering every known triple of train, valid and test; kelm
FilteredRankEvaluator, PyKEEN RankBasedEvaluator(filtered=True) with train and valid as extra
filter triples (``both.realistic`` metrics).

Each (library, mode) runs in a fresh subprocess of this script, so ``peak_rss_mb`` is that
process's own ru_maxrss at its end (imports, data, training and evaluation); ``base_rss_mb`` is
ru_maxrss once imports and data are loaded, before the model exists. Each runs ``--repeats``
times, kelm and PyKEEN alternating, and the fastest run is reported (``all_train_seconds`` lists
every run); each evaluates ``--eval-repeats`` times and the fastest is kept. Minimum times are
robust to other load on the machine, which only ever adds time.

Training seconds: kelm is driven through its real engine (Trainer.fit, the same loop as
``kelm kge train``) and its time is the ``loop_seconds`` of its metrics.json: the training loop
alone, without the final checkpoint and model export (``wall_seconds`` has them too, and is
reported as ``wall_seconds``); PyKEEN's is the wall time of ``TrainingLoop.train``.

The FLOP floor of 1-N ComplEx training: each query scores all E entities with one (B, D) x
(D, E) matmul (2 * D * E FLOPs per query, D real dimensions), and forward + backward cost about
3 such matmuls; ``floor_seconds`` is the measured time of those 3 bare matmuls per batch over
one epoch's queries on this machine, and ``kelm_over_floor`` is kelm's 1-N seconds per epoch
divided by it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import emit

MODES = {"ns": "negative-sampling", "1-n": "1-n"}


def fastest(fn: Any, repeats: int) -> tuple[Any, float]:
    """``fn()``'s result and its fastest wall time over ``repeats`` calls (robust to a busy machine)."""
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def load_tensors(dataset: str) -> Any:
    from kelm.kg.datasets import load_graph
    from kelm.kg.tensors import TripleTensors

    # valid/test triples naming an entity unseen in train (WN18RR, FB15k-237) are kept, as LibKGE does
    return TripleTensors.from_graph(load_graph(dataset, unseen="keep"))


# -- kelm -------------------------------------------------------------------------------------
def run_kelm(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from kelm.tasks.link_prediction import LinkPredictionConfig, LinkPredictionTask
    from kelm.train.config import TrainConfig
    from kelm.train.distributed import shutdown
    from kelm.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    mode = MODES[args.mode]
    task_cfg = LinkPredictionConfig(
        dataset=args.dataset,
        model=args.model,
        dim=args.dim,
        training=mode,
        reciprocal=True,
        loss=args.loss if mode == "negative-sampling" else "ce",
        sampler="uniform",
        num_negatives=args.num_negatives,
        margin=args.margin,
        regularizer="none",
        valid_split=None,  # no evaluation inside fit: evaluation is timed on its own below
        test_split=None,
    )
    task = LinkPredictionTask(task_cfg)
    train_cfg = TrainConfig(
        strategy="single",
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        schedule="constant",
        clip_grad_norm=None,
        amp="off",
        log_every=1000,
        tensorboard=False,
        threads=args.threads,
    )
    base = rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(task, train_cfg, Path(tmp) / "run")
        try:
            summary = trainer.fit()
            written = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
            test = task.test_triples if task.test_triples is not None else task.tensors.triples["test"]
            model = trainer.model
            model.eval()
            with torch.no_grad():
                result, eval_s = fastest(
                    lambda: task.evaluator().rank(task.scoring(model), test, sides=task.sides), args.eval_repeats
                )
                metrics = result.metrics()
        finally:
            trainer.close()
            shutdown()
    train_s = float(written["loop_seconds"])
    return {
        "train_seconds": train_s,
        "wall_seconds": float(written["wall_seconds"]),
        "seconds_per_epoch": train_s / args.epochs,
        "steps": summary["steps"],
        "train_items": len(task.train_data()),
        "eval_seconds": eval_s,
        "mrr": float(metrics["mrr"]),
        "hits@10": float(metrics["hits@10"]),
        "final_train_loss": summary["final_train_loss"],
        "base_rss_mb": base,
        "peak_rss_mb": rss_mb(),
    }


# -- PyKEEN -----------------------------------------------------------------------------------
def run_pykeen(args: argparse.Namespace) -> dict[str, Any]:
    import pykeen
    import torch
    from pykeen.evaluation import RankBasedEvaluator
    from pykeen.losses import CrossEntropyLoss, MarginRankingLoss, SoftplusLoss
    from pykeen.models import ComplEx, DistMult
    from pykeen.training import LCWATrainingLoop, SLCWATrainingLoop
    from pykeen.triples import TriplesFactory

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tensors = load_tensors(args.dataset)
    train, valid, test = (tensors.triples[s] for s in ("train", "valid", "test"))
    tf = TriplesFactory(
        mapped_triples=train,
        entity_to_id=tensors.entity_index(),
        relation_to_id=tensors.relation_index(),
        create_inverse_triples=True,
    )
    base = rss_mb()
    if args.mode == "ns":
        loss = MarginRankingLoss(margin=args.margin) if args.loss == "margin" else SoftplusLoss()
    else:
        loss = CrossEntropyLoss()
    # kelm's initialisation: every real coordinate ~ N(0, 1 / dim); PyKEEN's own defaults (ComplEx:
    # standard normal, DistMult: Xavier) start with large scores and learn far slower here.
    init = functools.partial(torch.nn.init.normal_, std=args.dim**-0.5)
    common = {
        "triples_factory": tf,
        "loss": loss,
        "regularizer": None,
        "random_seed": args.seed,
        "entity_initializer": init,
        "relation_initializer": init,
    }
    if args.model == "complex":
        model = ComplEx(embedding_dim=args.dim // 2, **common)
    else:
        model = DistMult(embedding_dim=args.dim, **common)
    init_std = float(
        torch.cat(
            [torch.view_as_real(p).flatten() if p.is_complex() else p.flatten() for p in model.parameters()]
        ).std()
    )
    regs = [m for m in model.modules() if type(m).__name__.endswith("Regularizer")]
    opt_cls = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}[args.optimizer]
    optimizer = opt_cls(model.parameters(), lr=args.lr)
    if args.mode == "ns":
        loop: Any = SLCWATrainingLoop(
            model=model,
            triples_factory=tf,
            optimizer=optimizer,
            automatic_memory_optimization=False,
            negative_sampler="basic",
            negative_sampler_kwargs={"num_negs_per_pos": args.num_negatives, "corruption_scheme": ("tail",)},
        )
    else:
        loop = LCWATrainingLoop(
            model=model, triples_factory=tf, optimizer=optimizer, automatic_memory_optimization=False
        )
    t0 = time.perf_counter()
    losses = loop.train(
        triples_factory=tf,
        num_epochs=args.epochs,
        batch_size=args.batch_size,
        use_tqdm=False,
        use_tqdm_batch=False,
    )
    train_s = time.perf_counter() - t0
    evaluator = RankBasedEvaluator(filtered=True)
    result, eval_s = fastest(
        lambda: evaluator.evaluate(
            model, test, additional_filter_triples=[train, valid], batch_size=args.eval_batch_size, use_tqdm=False
        ),
        args.eval_repeats,
    )
    return {
        "pykeen": pykeen.get_version(),
        "train_seconds": train_s,
        "seconds_per_epoch": train_s / args.epochs,
        "eval_seconds": eval_s,
        "mrr": float(result.get_metric("both.realistic.inverse_harmonic_mean_rank")),
        "hits@10": float(result.get_metric("both.realistic.hits_at_10")),
        "final_train_loss": float(losses[-1]) if losses else None,
        "regularizers": len(regs),
        "init_std": init_std,
        "base_rss_mb": base,
        "peak_rss_mb": rss_mb(),
    }


# -- the FLOP floor ---------------------------------------------------------------------------
def flop_floor(args: argparse.Namespace, num_queries: int, num_entities: int) -> dict[str, Any]:
    """Time of the 3 bare (B, D) x (D, E)-sized matmuls per batch over one epoch of 1-N queries."""
    import torch

    torch.set_num_threads(args.threads)
    D, E, B = args.dim, num_entities, args.batch_size
    sizes = [B] * (num_queries // B) + ([num_queries % B] if num_queries % B else [])
    ent = torch.randn(E, D)
    qs = {b: torch.randn(b, D) for b in set(sizes)}
    gs = {b: torch.randn(b, E) for b in set(sizes)}

    def epoch() -> None:
        for b in sizes:
            torch.mm(qs[b], ent.T)  # forward scores
            torch.mm(gs[b], ent)  # grad wrt queries
            torch.mm(gs[b].T, qs[b])  # grad wrt entity table

    epoch()  # warm-up
    _, sec = fastest(epoch, args.floor_repeats)
    flops = 2 * num_queries * E * D * 3
    return {
        "queries": num_queries,
        "entities": E,
        "dim": D,
        "flops": flops,
        "floor_seconds": sec,
        "gflops_per_second": flops / sec / 1e9,
    }


# -- driver -----------------------------------------------------------------------------------
def worker_cmd(args: argparse.Namespace, lib: str, mode: str) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", lib, "--mode", mode]
    for key in (
        "dataset",
        "model",
        "dim",
        "epochs",
        "batch_size",
        "eval_batch_size",
        "optimizer",
        "lr",
        "num_negatives",
        "loss",
        "margin",
        "threads",
        "seed",
        "eval_repeats",
    ):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return cmd


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="umls")
    ap.add_argument("--model", default="complex", choices=["complex", "distmult"])
    ap.add_argument("--dim", type=int, default=256, help="real parameters per embedding")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--eval-batch-size", type=int, default=256, help="PyKEEN evaluation batch size")
    ap.add_argument("--optimizer", default="adam", choices=["adam", "adagrad"])
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--num-negatives", type=int, default=32)
    ap.add_argument("--loss", default="margin", choices=["margin", "softplus"], help="negative-sampling loss")
    ap.add_argument("--margin", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default="ns,1-n")
    ap.add_argument("--floor-repeats", type=int, default=5, help="timed epochs of the bare matmuls; fastest kept")
    ap.add_argument("--libs", default="kelm,pykeen", help="kelm alone gives its speed and FLOP floor only")
    ap.add_argument("--repeats", type=int, default=3, help="runs per (library, mode), alternating; fastest kept")
    ap.add_argument("--eval-repeats", type=int, default=3, help="evaluations per run; fastest kept")
    ap.add_argument("--worker", choices=["kelm", "pykeen"], help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=list(MODES), help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    if args.worker:
        os.environ["KELM_PROGRESS"] = "0"
        out = run_kelm(args) if args.worker == "kelm" else run_pykeen(args)
        print("RESULT " + json.dumps(out))
        return

    env = {**os.environ, "KELM_PROGRESS": "0"}
    results: dict[str, Any] = {
        "dataset": args.dataset,
        "model": args.model,
        "dim": args.dim,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "threads": args.threads,
    }
    for mode in args.modes.split(","):
        row: dict[str, Any] = {}
        libs = args.libs.split(",")
        runs: dict[str, list[dict[str, Any]]] = {lib: [] for lib in libs}
        for _ in range(args.repeats):
            for lib in libs:  # alternating, so a busy spell hits both
                proc = subprocess.run(worker_cmd(args, lib, mode), env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
                    raise SystemExit(f"{lib} {mode} failed")
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
                runs[lib].append(json.loads(line[len("RESULT ") :]))
        for lib, rs in runs.items():
            best = dict(min(rs, key=lambda r: r["train_seconds"]))
            best["eval_seconds"] = min(r["eval_seconds"] for r in rs)
            best["all_train_seconds"] = [round(r["train_seconds"], 3) for r in rs]
            best["all_mrr"] = [round(r["mrr"], 4) for r in rs]
            row[lib] = best
        if set(libs) != {"kelm", "pykeen"}:
            results[mode] = row
            continue
        k, p = row["kelm"], row["pykeen"]
        row["ratios"] = {
            "train_speed_pykeen_over_kelm": ratio(p["train_seconds"], k["train_seconds"]),
            "eval_speed_pykeen_over_kelm": ratio(p["eval_seconds"], k["eval_seconds"]),
            "peak_rss_kelm_over_pykeen": ratio(k["peak_rss_mb"], p["peak_rss_mb"]),
            "mrr_kelm_minus_pykeen": round(k["mrr"] - p["mrr"], 4),
        }
        if mode == "ns":
            row["loss"] = args.loss
            row["num_negatives"] = args.num_negatives
        results[mode] = row
    if "1-n" in results and "kelm" in results["1-n"] and args.model == "complex":
        tensors = load_tensors(args.dataset)
        floor = flop_floor(args, results["1-n"]["kelm"]["train_items"], tensors.num_entities)
        floor["kelm_over_floor"] = ratio(results["1-n"]["kelm"]["seconds_per_epoch"], floor["floor_seconds"])
        results["flop_floor_1n"] = floor
    emit("kge_vs_pykeen", results, args.json)


if __name__ == "__main__":
    main()
