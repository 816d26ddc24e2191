"""Ablation of KG-enhanced classification on the UMLS-derived set: LM-only, KG-only and joint
(concat and GreaseLM-style fusion).

    KELM_DATA_DIR=../shared/data python bench/fusion.py [--steps 120] [--per-entity 10]
        [--variants lm,kg,joint-concat,joint-greaselm] [--seed 0] [--threads 1] [--out DIR]

Each variant trains `kg-enhanced-classification` on ``umls-groups`` through the engine with
MiniLM (lm and joint; kg uses no LM) for ``--steps`` optimizer steps from the same seed, and
reports test accuracy and macro-F1; linking accuracy is measured on template sentences holding
every UMLS label (dictionary stage) and plural variants of them (nearest-neighbour stage).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KELM_PROGRESS", "0")

import torch  # noqa: E402

TEMPLATES = ("The study found that {} was important.", "{} appears in the report.", "We compared it with {} today.")
LR = {"lm": 1e-4, "kg": 1e-3, "joint": 1e-4}


def plural(label: str) -> str:
    words = label.split()
    last = words[-1]
    words[-1] = last[:-1] + "ies" if last.endswith("y") else last + "es" if last.endswith(("s", "x")) else last + "s"
    return " ".join(words)


def linking_report() -> dict[str, dict[str, float]]:
    from kelm.kg.datasets import load_graph
    from kelm.kg.tensors import TripleTensors
    from kelm.linking.linker import EntityLinker, GoldMention, linking_accuracy
    from kelm.lm.encoding import load_text_embedder
    from kelm.tasks.kg_enhanced import cached_index

    kg = load_graph("umls")
    embed, _ = load_text_embedder("minilm", max_length=32)
    index = cached_index(kg, TripleTensors.from_graph(kg).entity_ids, "minilm", embed)
    out = {}
    for name, variant in (("labels", lambda s: s), ("plural_variants", plural)):
        gold = []
        for i, e in enumerate(sorted(kg.entities)):
            mention = variant(kg.entities[e].label or e)
            text = TEMPLATES[i % 3].format(mention)
            start = text.index(mention)
            gold.append((text, [GoldMention(start, start + len(mention), e)]))
        out[name] = linking_accuracy(EntityLinker.from_kg(kg, index=index, embed=embed), gold)
    return out


def main() -> None:
    from kelm.app.run import run_training

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--per-entity", type=int, default=10)
    ap.add_argument("--variants", default="lm,kg,joint-concat,joint-greaselm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="kelm-fusion-")
    root = args.out or Path(tmp.name)
    t0 = time.perf_counter()
    result: dict = {"load_average_start": os.getloadavg()[0], "linking": linking_report(), "modes": {}}
    result["linking_seconds"] = round(time.perf_counter() - t0, 1)
    for variant in args.variants.split(","):
        mode, _, fusion = variant.partition("-")
        task = {
            "name": "kg-enhanced-classification",
            "dataset": "umls-groups",
            "generate_per_entity": args.per_entity,
            "model": "minilm",
            "max_length": 32,
            "mode": mode,
            "fusion": fusion or "concat",
        }
        train = {
            "strategy": "single",
            "max_steps": args.steps,
            "batch_size": 16,
            "lr": LR[mode],
            "warmup_steps": 10,
            "log_every": 40,
            "tensorboard": False,
            "threads": args.threads,
            "seed": args.seed,
        }
        t = time.perf_counter()
        summary = run_training({"task": task, "train": train}, root / variant)
        result["modes"][variant] = {
            "test_accuracy": round(summary["test"]["accuracy"], 4),
            "test_macro_f1": round(summary["test"]["macro_f1"], 4),
            "valid_accuracy": round(summary["valid"]["accuracy"], 4),
            "seconds": round(time.perf_counter() - t, 1),
        }
        print(variant, result["modes"][variant], file=sys.stderr, flush=True)
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    result["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
