"""Time to target: training seconds until valid MRR reaches a fraction of the published number,
kelm and PyKEEN with the same model and recipe.

    KELM_DATA_DIR=../shared/data python bench/kge_time_to_target.py fb15k-237-complex \
        [--fraction 0.95] [--budget 3600] [--eval-epochs 2] [--threads 1] [--libs kelm,pykeen] [--json]

The recipe is the shipped ``configs/kge/NAME.toml`` (negative sampling or 1-N). kelm trains it
through its engine as it is (``--eval-epochs`` only sets how often valid is measured; no
checkpoints). PyKEEN gets the same model, real dimensions, relations made reciprocal (inverse
triples), optimizer, learning rate, batch size, number of negatives and loss: sLCWA with
``BasicNegativeSampler`` (negatives drawn per triple; PyKEEN has no batch-shared sampler) and
``CrossEntropyLoss`` for kelm's ``ce``, or LCWA for 1-N. What PyKEEN lacks is left out on its side
and named in the output: embedding dropout, a batch-shared sampler. Both start from kelm's
initialisation (every real coordinate ~ N(0, 1 / dim)).

Both evaluate valid the same way, timed apart from training: filtered ranks of head and tail
queries against every known triple (kelm's evaluator; PyKEEN's RankBasedEvaluator, ``both.
realistic``). Training seconds exclude evaluation. A library stops when it reaches the target
or when its training seconds pass ``--budget``; then it reports the best valid MRR it reached.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import emit
from kge_published import PUBLISHED

ROOT = Path(__file__).resolve().parent.parent


def recipe_path(name: str) -> Path:
    """A shipped recipe's name (``configs/kge/NAME.toml``) or a TOML file's path."""
    return ROOT / "configs" / "kge" / f"{name}.toml" if name in PUBLISHED else Path(name)


def load_recipe(name: str) -> Any:
    from kelm.app.run import load_run_config

    return load_run_config(recipe_path(name))


def steps_per_epoch(task: Any, batch_size: int) -> int:
    return max(1, len(task.train_data()) // batch_size)


# -- kelm -------------------------------------------------------------------------------------
def run_kelm(args: argparse.Namespace, target: float) -> dict[str, Any]:
    import torch

    from kelm.app.run import load_run_config
    from kelm.train.callbacks import TrainerCallback
    from kelm.train.distributed import shutdown
    from kelm.train.logging import timer
    from kelm.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    probe = load_recipe(args.name)
    per_epoch = steps_per_epoch(probe.build_task(), probe.config.train.batch_size)
    overrides = {
        "train.eval_every": per_epoch * args.eval_epochs,
        "train.checkpoint_every": 10**9,  # none before the end
        "train.early_stopping_patience": None,
        "train.tensorboard": False,
        "train.strategy": "single",
        "train.threads": args.threads,
        "task.test_split": None,
    }
    run = load_run_config(recipe_path(args.name), overrides)
    trace: list[dict[str, float]] = []

    class UntilTarget(TrainerCallback):
        """Training seconds (evaluations excluded) at each evaluation; stops at the target or budget."""

        def on_train_begin(self, trainer: Any) -> None:
            self.train_s, self.mark = 0.0, timer()

        def on_step_end(self, trainer: Any, step: int) -> None:
            now = timer()
            self.train_s, self.mark = self.train_s + now - self.mark, now

        def on_evaluate(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
            trace.append({"epoch": step / per_epoch, "train_seconds": self.train_s, "mrr": metrics["mrr"]})
            if metrics["mrr"] >= target or self.train_s >= args.budget:
                trainer.control.should_stop = True
            self.mark = timer()

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            run.build_task(), run.config.train, Path(tmp) / "run", run_config=run.as_dict(), callbacks=[UntilTarget()]
        )
        try:
            trainer.fit()
        finally:
            trainer.close()
            shutdown()
    return {"trace": trace}


# -- PyKEEN -----------------------------------------------------------------------------------
def run_pykeen(args: argparse.Namespace, target: float) -> dict[str, Any]:
    import pykeen
    import torch
    from pykeen.evaluation import RankBasedEvaluator
    from pykeen.losses import BCEWithLogitsLoss, CrossEntropyLoss, MarginRankingLoss, NSSALoss, SoftplusLoss
    from pykeen.models import ComplEx, DistMult, RotatE
    from pykeen.training import LCWATrainingLoop, SLCWATrainingLoop
    from pykeen.triples import TriplesFactory

    from kelm.kg.datasets import load_graph
    from kelm.kg.tensors import TripleTensors

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    run = load_recipe(args.name)
    t, tr = run.task_config, run.config.train
    tensors = TripleTensors.from_graph(load_graph(t.dataset, unseen=t.unseen))
    train, valid = tensors.triples["train"], tensors.triples["valid"]
    test = tensors.triples["test"]
    tf = TriplesFactory(
        mapped_triples=train,
        entity_to_id=tensors.entity_index(),
        relation_to_id=tensors.relation_index(),
        create_inverse_triples=bool(t.reciprocal),
    )
    losses = {
        "ce": CrossEntropyLoss,
        "bce": BCEWithLogitsLoss,
        "softplus": SoftplusLoss,
        "margin": functools.partial(MarginRankingLoss, margin=t.margin),
        "self-adversarial": functools.partial(
            NSSALoss, margin=t.margin, adversarial_temperature=t.adversarial_temperature
        ),
    }
    init = functools.partial(torch.nn.init.normal_, std=t.dim**-0.5)
    common = {"triples_factory": tf, "loss": losses[t.loss_name](), "random_seed": 0}
    linear = {"regularizer": None, "entity_initializer": init, "relation_initializer": init}
    if t.model == "complex":
        model = ComplEx(embedding_dim=t.dim // 2, **linear, **common)
    elif t.model == "distmult":
        model = DistMult(embedding_dim=t.dim, **linear, **common)
    else:
        model = RotatE(embedding_dim=t.dim // 2, **common)
    opt_cls = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}[tr.optimizer]
    optimizer = opt_cls(model.parameters(), lr=tr.lr)
    if t.training == "negative-sampling":
        scheme = ("tail",) if t.reciprocal else ("head", "tail")
        loop: Any = SLCWATrainingLoop(
            model=model,
            triples_factory=tf,
            optimizer=optimizer,
            automatic_memory_optimization=False,
            negative_sampler="basic",
            negative_sampler_kwargs={"num_negs_per_pos": t.num_negatives, "corruption_scheme": scheme},
        )
    else:
        loop = LCWATrainingLoop(
            model=model, triples_factory=tf, optimizer=optimizer, automatic_memory_optimization=False
        )
    evaluator = RankBasedEvaluator(filtered=True)
    trace: list[dict[str, float]] = []
    train_s, epoch = 0.0, 0
    while True:
        epoch += args.eval_epochs
        t0 = time.perf_counter()
        loop.train(
            triples_factory=tf,
            num_epochs=epoch,
            batch_size=tr.batch_size,
            use_tqdm=False,
            use_tqdm_batch=False,
            continue_training=epoch > args.eval_epochs,
        )
        train_s += time.perf_counter() - t0
        result = evaluator.evaluate(
            model, valid, additional_filter_triples=[train, test], batch_size=256, use_tqdm=False
        )
        mrr = float(result.get_metric("both.realistic.inverse_harmonic_mean_rank"))
        trace.append({"epoch": epoch, "train_seconds": train_s, "mrr": mrr})
        if mrr >= target or train_s >= args.budget:
            break
    left_out = [name for name, on in (("dropout", t.dropout > 0), ("shared negatives", t.sampler == "shared")) if on]
    return {"trace": trace, "pykeen": pykeen.get_version(), "not_in_pykeen": left_out}


# -- driver -----------------------------------------------------------------------------------
def summarise(trace: list[dict[str, float]], target: float) -> dict[str, Any]:
    hit = next((p for p in trace if p["mrr"] >= target), None)
    best = max(trace, key=lambda p: p["mrr"]) if trace else None
    return {
        "seconds_to_target": None if hit is None else round(hit["train_seconds"], 1),
        "epochs_to_target": None if hit is None else hit["epoch"],
        "best_mrr": None if best is None else round(best["mrr"], 4),
        "train_seconds": round(trace[-1]["train_seconds"], 1) if trace else 0.0,
        "epochs": trace[-1]["epoch"] if trace else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name", help=f"one of {', '.join(sorted(PUBLISHED))}, or a config's path (with --target-mrr)")
    ap.add_argument("--fraction", type=float, default=0.95, help="of the published test MRR")
    ap.add_argument("--target-mrr", type=float, help="the target itself (a config that is not a published one)")
    ap.add_argument("--budget", type=float, default=3600.0, help="training seconds per library")
    ap.add_argument("--eval-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--libs", default="kelm,pykeen")
    ap.add_argument("--worker", choices=("kelm", "pykeen"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.target_mrr is None and args.name not in PUBLISHED:
        raise SystemExit(f"{args.name} is not a published recipe: give --target-mrr")
    target = args.target_mrr if args.target_mrr is not None else args.fraction * PUBLISHED[args.name]["mrr"]
    if args.worker:
        out = (run_kelm if args.worker == "kelm" else run_pykeen)(args, target)
        print("RESULT " + json.dumps(out))
        return
    results: dict[str, Any] = {"name": args.name, "target_mrr": round(target, 4), "budget_seconds": args.budget}
    for lib in args.libs.split(","):
        cmd = [sys.executable, os.path.abspath(__file__), args.name, "--worker", lib]
        cmd += ["--fraction", str(args.fraction), "--budget", str(args.budget)]
        cmd += ["--target-mrr", str(target)]
        cmd += ["--eval-epochs", str(args.eval_epochs), "--threads", str(args.threads)]
        env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{lib} failed:\n{proc.stderr[-3000:]}")
        out = json.loads(line[len("RESULT ") :])
        results[lib] = summarise(out["trace"], target) | out
    k, p = results.get("kelm", {}), results.get("pykeen", {})
    if k.get("seconds_to_target") and p.get("seconds_to_target"):
        results["speedup"] = round(p["seconds_to_target"] / k["seconds_to_target"], 2)
    emit("kge_time_to_target", results, args.json)


if __name__ == "__main__":
    main()
