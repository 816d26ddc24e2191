"""Ablation of KG-enhanced classification on the UMLS-derived set: LM-only, KG-only and joint.

    python bench/fusion.py [--steps 120] [--per-entity 10] [--fusion concat] [--out runs/bench-fusion]

Each mode trains `kg-enhanced-classification` on ``umls-groups`` through the engine with MiniLM
(lm and joint; kg uses no LM) and reports test accuracy and macro-F1; linking accuracy is
measured on template sentences holding every UMLS label (dictionary stage) and plural variants
of them (nearest-neighbour stage). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
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
    from kelm.fusion.linking import EntityLinker, GoldMention, linking_accuracy, load_text_embedder
    from kelm.kg.tensors import TripleTensors
    from kelm.tasks.kg_enhanced import cached_index, load_graph

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
    from kelm.train.run import run_training

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--per-entity", type=int, default=10)
    ap.add_argument("--fusion", default="concat")
    ap.add_argument("--modes", default="lm,kg,joint")
    ap.add_argument("--out", default="runs/bench-fusion")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    result: dict = {"linking": linking_report(), "modes": {}}
    result["linking_seconds"] = round(time.perf_counter() - t0, 1)
    for mode in args.modes.split(","):
        task = {
            "name": "kg-enhanced-classification",
            "dataset": "umls-groups",
            "generate_per_entity": args.per_entity,
            "model": "minilm",
            "max_length": 32,
            "mode": mode,
            "fusion": args.fusion,
        }
        train = {
            "strategy": "single",
            "max_steps": args.steps,
            "batch_size": 16,
            "lr": LR[mode],
            "warmup_steps": 10,
            "log_every": 40,
            "tensorboard": False,
            "threads": 2,
        }
        out = Path(args.out) / f"{mode}-{args.fusion}-{int(time.time())}"
        t = time.perf_counter()
        summary = run_training({"task": task, "train": train}, out)
        result["modes"][mode] = {
            "test_accuracy": round(summary["test"]["accuracy"], 4),
            "test_macro_f1": round(summary["test"]["macro_f1"], 4),
            "valid_accuracy": round(summary["valid"]["accuracy"], 4),
            "seconds": round(time.perf_counter() - t, 1),
        }
        print(mode, result["modes"][mode], flush=True)
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
