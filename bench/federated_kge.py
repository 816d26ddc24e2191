"""Federated KGE against its two baselines on one graph: every client alone, FedE, and central.

    KELM_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python bench/federated_kge.py \
        [--config configs/federate/fb15k-237-complex.toml] [--clients 3 10] [--rounds 20] \
        [--partition relation] [--parallel 1] [--runs runs/federated-kge] [--json]

Each client holds a part of the training triples (``--partition``) and is tested on the same
part of the test triples. The three runs train for the same number of epochs (``--rounds`` ×
``[federate] local_epochs``) with the config's [task] and [train]:

- central: one model on all the training triples (`kelm train`), tested on the whole test split;
- local-only: each client trains alone (`kelm federate --baseline local`), tested on its own part;
- federated: `kelm federate` on Flower's simulation engine, entity and relation embeddings
  averaged per row over the clients that use them (FedE), the global model tested on each
  client's part and on the whole split (for a relation split, the same triples).

Finished runs (a ``metrics.json``) are kept and not rerun. Prints the table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from common import emit

ROOT = Path(__file__).resolve().parent.parent


def load(path: Path) -> dict[str, Any] | None:
    metrics = path / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.is_file() else None


def row(setting: str, clients: int, test: dict[str, float], seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "setting": setting,
        "clients": clients,
        "mrr": test["mrr"],
        "hits@10": test["hits@10"],
        "seconds": seconds,
        **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "federate" / "fb15k-237-complex.toml"))
    ap.add_argument("--clients", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--partition", default="relation")
    ap.add_argument("--parallel", type=int, default=1, help="simulated clients training at once")
    ap.add_argument("--runs", default="runs/federated-kge")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from kelm.app.federate.baselines import train_local_only
    from kelm.app.federate.simulate import simulate
    from kelm.app.run import load_run_config, run_training

    runs = Path(args.runs)
    common = {"federate.rounds": args.rounds, "federate.partition": args.partition, "train.tensorboard": False}
    common["federate.parallel_clients"] = args.parallel
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    rows: list[dict[str, Any]] = []

    central_dir = runs / "central"
    base = load_run_config(args.config, common)
    epochs = args.rounds * base.config.federate.local_epochs
    central = load(central_dir)
    if central is None:
        central = run_training(
            load_run_config(
                args.config, {**common, "train.epochs": epochs, "train.strategy": "single", "train.threads": threads}
            ),
            central_dir,
        )
    rows.append(row("central", 1, central["test"], central["wall_seconds"]))

    for n in args.clients:
        over = {**common, "federate.clients": n, "federate.client_threads": threads}
        local = load(runs / f"local-{n}") or train_local_only(load_run_config(args.config, over), runs / f"local-{n}")
        rows.append(row("local-only", n, local["client_test"], local["wall_seconds"]))
        fed = load(runs / f"federated-{n}") or simulate(load_run_config(args.config, over), runs / f"federated-{n}")
        rows.append(row("federated", n, fed["client_test"], fed["wall_seconds"], global_test_mrr=fed["test"]["mrr"]))

    for r in rows:
        r["of_central"] = r["mrr"] / rows[0]["mrr"]
    emit(
        "federated_kge", {"config": args.config, "epochs": epochs, "partition": args.partition, "rows": rows}, args.json
    )
    print("| setting | clients | test MRR | Hits@10 | of central | wall |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [r["setting"], r["clients"], f"{r['mrr']:.4f}", f"{r['hits@10']:.3f}", f"{r['of_central']:.1%}"]
        print("| " + " | ".join(str(c) for c in cells) + f" | {r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
