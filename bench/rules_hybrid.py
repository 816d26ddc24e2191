"""Rules + KGE: test MRR of the rules alone, the KGE run alone and their hybrid, per data set.

    KELM_DATA_DIR=../shared/data python bench/rules_hybrid.py --datasets kinship codex-s \
        --seconds 60 --workers 2 --runs runs/rules-hybrid --json

For each data set: train ``configs/kge/<name>-complex.toml`` (``--max-steps`` caps it; a run
already in ``--runs`` is reused), mine rules for ``--seconds`` (``--max-length``,
``--max-acyclic-length``), then `kelm reason evaluate RULES --kge RUN --save`: ``α`` chosen on
validation, one row of test metrics per ranker. Every step is the CLI a user would run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import kelm

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "kge"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["umls", "kinship", "codex-s"])
    ap.add_argument("--runs", type=Path, default=Path("runs/rules-hybrid"))
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=3)
    ap.add_argument("--max-acyclic-length", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=None, help="cap on the KGE run's optimizer steps")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    for name in args.datasets:
        kge, rules = args.runs / f"{name}-complex", args.runs / f"{name}-rules"
        if not (kge / "metrics.json").is_file():
            cap = ["--max-steps", str(args.max_steps)] if args.max_steps else []
            kelm("kge", "train", str(CONFIGS / f"{name}-complex.toml"), "--out", str(kge), *cap)
        start = time.monotonic()
        kelm("reason", "mine", "--dataset", name, "--seconds", str(args.seconds), "--workers", str(args.workers),
             "--max-length", str(args.max_length), "--max-acyclic-length", str(args.max_acyclic_length),
             "--out", str(rules))  # fmt: skip
        mined = time.monotonic() - start
        start = time.monotonic()
        result = json.loads(kelm("reason", "evaluate", str(rules), "--kge", str(kge), "--save", "--json"))
        row = {"dataset": name, "rules": json.loads((rules / "mining.json").read_text())["rules"],
               "mining_s": round(mined, 1), "evaluate_s": round(time.monotonic() - start, 1),
               "alpha": result["alpha"]}  # fmt: skip
        for part in ("rules", "kge", "hybrid"):
            row |= {f"{part}_{k}": round(result[part][k], 4) for k in ("mrr", "hits@1", "hits@10")}
        print(json.dumps(row) if args.json else row, flush=True)


if __name__ == "__main__":
    main()
