"""The published KGE tables, reproduced: one shipped config trained to the end, resumable.

    KELM_DATA_DIR=../shared/data python bench/kge_published.py wn18rr-complex [--threads 2]
        [--runs runs/published] [--json]

Trains ``configs/kge/NAME.toml`` into ``RUNS/NAME`` with ``kelm kge train``. Run it again after an
interruption (a killed process, a closed session) and it resumes from the run's last checkpoint
(``--resume``). Each segment's start and end are recorded in ``RUNS/NAME/segments.json`` and
the wall time is their sum; an interrupted segment ends at its last checkpoint (the steps after it
are redone by the next segment, so only kept progress is counted).
When the run has finished (its epochs or early stopping), it prints the row for
docs/BENCHMARKS.md: test MRR and Hits@10 over all test triples (LibKGE's protocol) and without
those naming an entity unseen in train, the best valid MRR, the epochs trained, the total wall
time and the machine, beside the published number. Hyperparameters are the config's, chosen on
valid.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import emit

ROOT = Path(__file__).resolve().parent.parent
#: Published test numbers: ComplEx from LibKGE (Ruffinelli et al. 2020), RotatE from its paper (Sun et al. 2019).
PUBLISHED = {
    "wn18rr-complex": {"mrr": 0.475, "hits@10": 0.547, "source": "LibKGE (Ruffinelli et al. 2020)"},
    "fb15k-237-complex": {"mrr": 0.348, "hits@10": 0.536, "source": "LibKGE (Ruffinelli et al. 2020)"},
    "wn18rr-rotate": {"mrr": 0.476, "hits@10": 0.571, "source": "RotatE (Sun et al. 2019)"},
    "fb15k-237-rotate": {"mrr": 0.338, "hits@10": 0.533, "source": "RotatE (Sun et al. 2019)"},
}


def has_checkpoint(run: Path) -> bool:
    return any((run / "checkpoints").glob("step_*")) if (run / "checkpoints").is_dir() else False


def read_segments(run: Path) -> list[dict[str, float | None]]:
    path = run / "segments.json"
    return json.loads(path.read_text()) if path.is_file() else []


def write_segments(run: Path, segments: list[dict[str, float | None]]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "segments.json").write_text(json.dumps(segments))


def last_checkpoint_time(run: Path) -> float | None:
    steps = sorted((run / "checkpoints").glob("step_*")) if (run / "checkpoints").is_dir() else []
    return steps[-1].stat().st_mtime if steps else None


def train(config: Path, run: Path, threads: int) -> list[dict[str, float | None]]:
    """One segment of training (fresh, or resumed from the run's checkpoint), recorded."""
    segments = read_segments(run)
    if segments and segments[-1]["end"] is None:  # interrupted: its kept progress ends at its checkpoint
        segments[-1]["end"] = last_checkpoint_time(run) or segments[-1]["start"]
    cmd = [sys.executable, "-m", "kelm.cli", "kge", "train", str(config), "--out", str(run)]
    if has_checkpoint(run):
        cmd += ["--resume", str(run)]
    segments.append({"start": time.time(), "end": None})
    write_segments(run, segments)
    subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": str(threads)})
    segments[-1]["end"] = time.time()
    write_segments(run, segments)
    return segments


def result_row(name: str, run: Path, segments: list[dict[str, float | None]]) -> dict[str, Any]:
    metrics = json.loads((run / "metrics.json").read_text())
    test_all = metrics.get("test_all") or metrics.get("test") or {}
    without = metrics.get("test_without_unseen") or {}
    wall = sum((s["end"] or s["start"]) - s["start"] for s in segments)
    return {
        "name": name,
        "published": PUBLISHED.get(name),
        "test_mrr": test_all.get("mrr"),
        "test_hits@10": test_all.get("hits@10"),
        "test_without_unseen_mrr": without.get("mrr"),
        "test_without_unseen_hits@10": without.get("hits@10"),
        "valid_mrr": (metrics.get("valid") or {}).get("mrr"),
        "steps": metrics.get("steps"),
        "best_step": metrics.get("best_step"),
        "epochs": metrics.get("epoch"),
        "stopped_early": metrics.get("stopped_early"),
        "wall_seconds": round(wall, 1),
        "segments": len(segments),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(PUBLISHED), help="a config of configs/kge/")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "published")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    config = ROOT / "configs" / "kge" / f"{args.name}.toml"
    run = args.runs / args.name
    run.parent.mkdir(parents=True, exist_ok=True)
    done = run / "metrics.json"
    segments = train(config, run, args.threads) if not done.is_file() else read_segments(run)
    if segments and segments[-1]["end"] is None:  # finished by a process this script did not start
        segments[-1]["end"] = done.stat().st_mtime
    emit("kge_published", {"config": str(config.relative_to(ROOT)), **result_row(args.name, run, segments)}, args.json)


if __name__ == "__main__":
    main()
