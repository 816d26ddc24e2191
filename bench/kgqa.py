"""Multi-hop KG question answering on CoDEx-S: LM-only baseline vs KG-enhanced model.

    KELM_DATA_DIR=../shared/data python bench/kgqa.py [--train-per-hop 400] [--eval-per-hop 100]
        [--epochs 20] [--lm-lrs 0.003] [--kg-lrs 0.001] [--fanout 24] [--max-nodes 800] [--encoder minilm] [--threads 1]
        [--keep DIR] [--json]
    KELM_DATA_DIR=../shared/data python bench/kgqa.py --evaluate DIR/run_kg_lr0.001 DIR/run_lm_lr0.003 [--json]

Steps: import CoDEx-S into a LadybugDB store in a temporary folder; generate 1-, 2- and 3-hop
questions from the store (`kelm.kgqa.generator`, one question per topic entity and hop count,
topic entities split 80/10/10, seed 0); train the ``lm`` (bi-encoder over all 2,034 entities) and
``kg`` (relational message passing over the topic's 3-hop subgraph: ``--fanout`` 24 new
neighbours per entity and hop, at most ``--max-nodes`` 800 nodes) models of the ``kgqa`` task
through the engine, each on the first ``--train-per-hop`` training and ``--eval-per-hop``
dev/test questions of every hop count, for ``--epochs`` passes. Both read the question through
the same frozen MiniLM (token states computed once) and the same question reader, and have the
same training budget and optimiser; each model is trained at every learning rate of its list
(``--lm-lrs``, ``--kg-lrs``: comma-separated; the defaults are the best on dev of 0.001 and 0.003
at 10 epochs) and the one with the best dev Hits@1 is reported; the answer-set threshold is chosen
on dev. Reports
test Hits@1 and F1 per hop count for both, and wall times.

``--evaluate RUN...`` instead scores runs kept by ``--keep`` on every dev and test question
(not only the first ``--eval-per-hop``): Hits@1 and F1 per hop count, the answer-set threshold
chosen on all of dev.

CoDEx-S as shipped here has no entity labels, so entity names (and the bracketed topic
mentions) are Wikidata ids such as ``Q7604``; relation names are the English labels.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KELM_PROGRESS", "0")

from common import emit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-per-hop", type=int, default=400)
    ap.add_argument("--eval-per-hop", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lm-lrs", default="0.003", help="learning rates tried for lm (best dev Hits@1 kept)")
    ap.add_argument("--kg-lrs", default="0.001", help="learning rates tried for kg (best dev Hits@1 kept)")
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--fanout", type=int, default=24)
    ap.add_argument("--max-nodes", type=int, default=800)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None, help="keep the store, questions and runs here")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--evaluate", type=Path, nargs="+", default=None, help="score these kept runs on every question")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.evaluate:
        emit("kgqa-codex-s-all-questions", {str(run): evaluate_all(run) for run in args.evaluate}, args.json)
        return
    from kelm.app.run import run_training
    from kelm.kg.importer import import_source, open_source
    from kelm.kg.store import open_store
    from kelm.kgqa.generator import GeneratorConfig, generate, write_generated
    from kelm.kgqa.graph import QAGraph

    tmp = tempfile.TemporaryDirectory(prefix="kelm-kgqa-")
    root = args.keep or Path(tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open_store(root / "store") as store:
        import_source(store, open_source("codex-s"), replace=True)
        graph = QAGraph.from_kg(store.export())
    t_import = time.perf_counter() - t0
    gcfg = GeneratorConfig(hops=(1, 2, 3), per_entity=1, max_answers=50, seed=0)
    t0 = time.perf_counter()
    stats = write_generated(root / "data", graph, generate(graph, gcfg), gcfg)
    t_generate = time.perf_counter() - t0

    results: dict[str, object] = {
        "load_average_start": os.getloadavg()[0],
        "graph": {"entities": stats["entities"], "relations": stats["relations"], "facts": stats["facts"]},
        "questions_generated": stats["questions"],
        "import_seconds": round(t_import, 1),
        "generate_seconds": round(t_generate, 1),
    }
    for model in ("lm", "kg"):
        tried = {}
        for lr in [float(x) for x in getattr(args, f"{model}_lrs").split(",")]:
            config = {
                "task": {
                    "name": "kgqa",
                    "data": str(root / "data"),
                    "store": str(root / "store"),
                    "model": model,
                    "encoder": args.encoder,
                    "finetune_encoder": False,
                    "max_train_per_hop": args.train_per_hop,
                    "max_eval_per_hop": args.eval_per_hop,
                    "dim": 256,
                    "fanout": args.fanout,
                    "max_nodes": args.max_nodes,
                },
                "train": {
                    "strategy": "single",
                    "epochs": args.epochs,
                    "batch_size": 32,
                    "lr": lr,
                    "schedule": "cosine",
                    "warmup_steps": 20,
                    "threads": args.threads,
                    "tensorboard": False,
                    "log_every": 50,
                },
            }
            t0 = time.perf_counter()
            summary = run_training(config, root / f"run_{model}_lr{lr:g}")
            tried[lr] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "loop_seconds": round(summary["loop_seconds"], 1),
                "steps": summary["steps"],
                "dev_hits@1": round(summary["valid"]["hits@1"], 4),
                "test": {k: round(v, 4) for k, v in summary["test"].items() if k != "loss"},
            }
            print(model, lr, tried[lr], file=sys.stderr, flush=True)
        best = max(tried, key=lambda lr: tried[lr]["dev_hits@1"])
        results[model] = {"lr": best, **tried[best], "tried": {f"{lr:g}": r for lr, r in tried.items()}}
    lm, kg = results["lm"]["test"], results["kg"]["test"]  # type: ignore[index]
    results["kg_minus_lm_hits@1"] = {
        f"{k}hop": round(kg[f"hits@1_{k}hop"] - lm[f"hits@1_{k}hop"], 4) for k in (1, 2, 3)
    }
    results["load_average_end"] = os.getloadavg()[0]
    emit("kgqa-codex-s", results, args.json)


def evaluate_all(run: Path) -> dict[str, dict[str, float]]:
    """Hits@1 and F1 per hop count of a kept run on all its dev and test questions."""
    from kelm.config import read_toml
    from kelm.tasks.kgqa import KGQAConfig, KGQATask
    from kelm.train.export import load_weights

    cfg = read_toml(run / "config.toml")["task"] | {"max_eval_per_hop": None}
    task = KGQATask(KGQAConfig(**cfg))
    model = load_weights(task.build_model(), run / "model").eval()
    out = {}
    for split in ("dev", "test"):  # dev first: it sets the threshold test uses
        samples = task.splits[split]
        batches = [task.collate(samples[i : i + 32]) for i in range(0, len(samples), 32)]
        metrics = task.finalize_metrics(task.evaluate(model, batches))
        out[split] = {k: round(v, 4) for k, v in metrics.items() if k != "loss"} | {"questions": len(samples)}
    return out


if __name__ == "__main__":
    main()
