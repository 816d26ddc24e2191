"""Design choices of the demo's text model: `frozen-text-kgc` variants on transductive and inductive UMLS.

    HF_HUB_OFFLINE=1 python bench/frozen_text.py [--variants base,dropout-0.7,...] [--out DIR] [--threads 1] [--json]

Each variant is ``configs/kgc/umls-frozen-minilm.toml`` with a few keys changed, trained through
`kelm train` twice: on the standard split and with 20% of the entities unseen in training
(``task.inductive = 0.2``, seed 0). Rows: filtered validation MRR (what a choice may look at),
test MRR and Hits@10 (both sides, all 135 entities), the step whose validation MRR was best
(early stopping keeps its weights) and the training loop's seconds. The MiniLM features are
computed once and cached in ``OUT/cache``.
"""

from __future__ import annotations

import argparse
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from common import emit, train_run

ROOT = Path(__file__).resolve().parents[1]
D7 = {"dropout": 0.7}
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},  # the config as it is (dropout 0)
    "base-seed1": {"train": {"seed": 1}},
    "dropout-0.3": {"task": {"dropout": 0.3}},
    "dropout-0.3-seed1": {"task": {"dropout": 0.3}, "train": {"seed": 1}},
    "dropout-0.5": {"task": {"dropout": 0.5}},
    "dropout-0.7": {"task": D7},
    "dropout-0.7-seed1": {"task": D7, "train": {"seed": 1}},
    "dropout-0.7-dim-128": {"task": D7 | {"dim": 128}},
    "dropout-0.7-steps-400": {"task": D7, "train": {"max_steps": 400}},
    "dropout-0.7-words-32": {"task": D7 | {"max_words": 32, "max_length": 64}},
}


def config(variant: dict[str, Any], inductive: bool, cache: Path, threads: int) -> dict[str, Any]:
    cfg = tomllib.loads((ROOT / "configs/kgc/umls-frozen-minilm.toml").read_text())
    task = cfg["task"] | {"feature_cache": str(cache)} | variant.get("task", {})
    if inductive:
        task["inductive"] = 0.2
    return {"task": task, "train": cfg["train"] | {"threads": threads, "tensorboard": False} | variant.get("train", {})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="kelm-frozen-text-"))
    rows = []
    for name in args.variants.split(","):
        for setting in ("transductive", "inductive"):
            cfg = config(VARIANTS[name], setting == "inductive", out / "cache", args.threads)
            m = train_run(cfg, str(out / f"{name}-{setting}"))
            test = m["test"]
            rows.append(
                {
                    "variant": name,
                    "setting": setting,
                    "valid_mrr": round(m["valid"]["mrr"], 4),
                    "test_mrr": round(test["mrr"], 4),
                    "test_hits@10": round(test["hits@10"], 4),
                    "best_step": m["best_step"] or m["steps"],
                    "loop_seconds": round(m["loop_seconds"], 1),
                }
            )
            if not args.json:
                print(rows[-1], flush=True)
    emit("frozen_text", {"rows": rows}, args.json)


if __name__ == "__main__":
    main()
