"""Mined rules as link predictors: filtered MRR and Hits@k per data set, with mining time.

    KELM_DATA_DIR=../shared/data python bench/rules.py --datasets umls kinship --seconds 60 --workers 2 --json

Each data set's training facts are mined for ``--seconds`` of wall time (mining stops earlier when a
window of samples finds no new rule), then the test facts are ranked against every entity with
the filtered setting, by max and by noisy-or aggregation.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from kelm.kg.datasets import load_graph
from kelm.reason.folder import evaluate, mine_folder, open_folder
from kelm.reason.mining import MiningConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["umls", "kinship"])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for name in args.datasets:
        kg = load_graph(name)
        with tempfile.TemporaryDirectory() as out:
            info = mine_folder(
                kg, Path(out), MiningConfig(seconds=args.seconds, workers=args.workers), {"dataset": name}
            )
            rule_set = open_folder(Path(out), kg)
            for aggregation in ("max", "noisy-or"):
                start = time.monotonic()
                m = evaluate(rule_set, "test", aggregation)
                rows.append({"dataset": name, "aggregation": aggregation, "rules": info["rules"],
                             "mining_s": info["seconds"], "ranking_s": round(time.monotonic() - start, 1),
                             **{k: round(m[k], 4) for k in ("mrr", "hits@1", "hits@3", "hits@10")}})  # fmt: skip
                print(json.dumps(rows[-1]) if args.json else rows[-1], flush=True)


if __name__ == "__main__":
    main()
