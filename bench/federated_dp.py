"""Differentially private federated fine-tuning on poem-sentiment, against the same run without DP.

    KELM_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python bench/federated_dp.py \
        [--clients 1 3] [--epsilon 8] [--rounds 10] [--trainable classifier pooler] \
        [--runs runs/federated-dp] [--json]

MiniLM classifies the 843 training verses without the 'mixed' label (as the fine-tuning
benchmarks do). Each setting is a `kelm federate` run on Flower's simulation engine, split IID
over ``--clients`` (one client: plain DP-SGD on all the data). The private runs add Opacus on each
client: every sample's gradient clipped to norm 1, Gaussian noise set so that the client's ε at
δ = 1e-5 over all its rounds is at most ``--epsilon`` (RDP accountant), Poisson-sampled
batches; they train ``--trainable`` only (the DP noise grows with the number of parameters
trained), and the non-private runs are given both ways, all parameters and ``--trainable`` only.
Finished runs (a ``metrics.json``) are kept. Prints the table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import emit


def load(path: Path) -> dict[str, Any] | None:
    metrics = path / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-4, help="non-private, all parameters")
    ap.add_argument("--dp-lr", type=float, default=0.05, help="private, and non-private of --trainable only")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--trainable", nargs="+", default=["classifier", "pooler"])
    ap.add_argument("--runs", default="runs/federated-dp")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from kelm.app.federate.simulate import simulate
    from kelm.app.run import load_run_config

    task = {
        "name": "classification",
        "dataset": "poem-sentiment",
        "model": "minilm",
        "max_length": 128,
        "drop_labels": ["2"],
    }
    rows = []
    for n in args.clients:
        settings = [
            ("non-private, all parameters", {}, args.lr, []),
            ("non-private, " + "+".join(args.trainable), {}, args.dp_lr, args.trainable),
            (
                f"DP ε ≤ {args.epsilon:g}, " + "+".join(args.trainable),
                {"dp_epsilon": args.epsilon},
                args.dp_lr,
                args.trainable,
            ),
        ]
        for name, dp, lr, trainable in settings:
            folder = Path(args.runs) / f"{n}-{name.split(',')[0].replace(' ', '-').replace('≤', 'le')}-{len(trainable)}"
            fed = {"clients": n, "rounds": args.rounds, "partition": "iid", "client_threads": 1, **dp}
            if trainable:
                fed["trainable"] = trainable
            config = {
                "task": task,
                "train": {"lr": lr, "batch_size": args.batch_size, "tensorboard": False},
                "federate": fed,
            }
            summary = load(folder) or simulate(load_run_config(config), folder)
            test = summary["test"]
            rows.append(
                {
                    "clients": n,
                    "setting": name,
                    "accuracy": test["accuracy"],
                    "macro_f1": test["macro_f1"],
                    "epsilon": (summary.get("privacy") or {}).get("epsilon"),
                    "seconds": summary["wall_seconds"],
                }
            )
    emit("federated_dp", {"rows": rows}, args.json)
    print("| clients | setting | test accuracy | macro-F1 | ε (δ = 1e-5) | of non-private | wall |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        base = next(b for b in rows if b["clients"] == r["clients"] and b["setting"].startswith("non-private, all"))
        eps = f"{r['epsilon']:.2f}" if r["epsilon"] is not None else "∞"
        print(
            f"| {r['clients']} | {r['setting']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {eps} | "
            f"{r['accuracy'] / base['accuracy']:.1%} | {r['seconds']:.0f} s |"
        )


if __name__ == "__main__":
    main()
