"""Fault tolerance: one of two ranks is killed mid-epoch; torchrun restarts the job, which resumes
from its last checkpoint and ends where an uninterrupted run ends.

The kill comes from the testing hook in `kelm.train.fault` (``KELM_FAULT_STEP``/``KELM_FAULT_RANK``),
which fires only in a job's first attempt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from kelm.train.logging import read_metrics

UMLS_TEXT = Path(__file__).resolve().parents[1] / "src/kelm/data/bundled/umls/entity2textlong.txt"
STEPS = 30


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("elastic")
    text = root / "corpus.txt"
    text.write_bytes(UMLS_TEXT.read_bytes()[:1100])  # 7 batches of 8 per epoch
    data = {
        "task": {"text": [str(text)], "seq_len": 16, "d_model": 32, "n_layer": 1, "n_head": 2},
        "train": {
            "strategy": "ddp",
            "threads": 1,
            "max_steps": STEPS,
            "batch_size": 8,
            "lr": 3e-3,
            "log_every": 1,
            "eval_every": 10,
            "checkpoint_every": 5,
            "tensorboard": False,
        },
    }
    path = root / "run.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def kelm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from kelm.cli import run; run()", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KELM_PROGRESS": "0", **(env or {})},
    )


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (none should outlive a job)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="module")
def uninterrupted(cfg: Path) -> Path:
    out = cfg.parent / "uninterrupted"
    proc = kelm("train", str(cfg), "--out", str(out), "--nproc", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("trained causal-lm") == 1  # rank 0 only
    return out


def test_killed_rank_restarts_and_finishes_like_uninterrupted_run(cfg: Path, uninterrupted: Path) -> None:
    out = cfg.parent / "killed"
    # rank 1 dies after step 13: mid-epoch (epoch 1, batch 6 of 7), three steps after a checkpoint
    fault = {"KELM_FAULT_STEP": "13", "KELM_FAULT_RANK": "1"}
    proc = kelm("train", str(cfg), "--out", str(out), "--nproc", "2", "--max-restarts", "1", env=fault)
    assert proc.returncode == 0, proc.stderr
    assert "exitcode: -9" in proc.stderr  # the agent saw the kill...
    assert processes_mentioning(str(out)) == []  # ...and no process is left behind

    ref = json.loads((uninterrupted / "metrics.json").read_text())
    got = json.loads((out / "metrics.json").read_text())
    assert got["steps"] == ref["steps"] == STEPS
    assert got["start_step"] == 10 and got["world_size"] == 2
    assert got["valid"]["loss"] == pytest.approx(ref["valid"]["loss"], rel=1e-4)
    # the logged curve is the uninterrupted one: rows of the dead attempt after step 10 are gone
    ref_rows, got_rows = read_metrics(uninterrupted), read_metrics(out)
    assert [(r.step, r.split, r.name) for r in got_rows] == [(r.step, r.split, r.name) for r in ref_rows]
    for a, b in zip(got_rows, ref_rows, strict=True):
        assert a.value == pytest.approx(b.value, rel=1e-4, abs=1e-9)


def test_without_restarts_the_job_fails_in_one_line(cfg: Path) -> None:
    out = cfg.parent / "no-restart"
    fault = {"KELM_FAULT_STEP": "3", "KELM_FAULT_RANK": "1"}
    proc = kelm("train", str(cfg), "--out", str(out), "--nproc", "2", "--max-restarts", "0", env=fault)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training failed: rank 1 was killed by signal 9"), proc.stderr
    assert "ChildFailedError" not in proc.stderr
    assert processes_mentioning(str(out)) == []


def test_worker_side_error_reaches_the_user_in_one_line(cfg: Path) -> None:
    """An error only the workers can see (the batch is larger than the data) comes back as the
    worker's own message, through the launcher."""
    out = cfg.parent / "too-big"
    proc = kelm("train", str(cfg), "--out", str(out), "--nproc", "2", "--batch-size", "4096")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: train.batch_size (4096) exceeds the"), proc.stderr
    assert "Traceback" not in proc.stderr
