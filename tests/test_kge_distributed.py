"""Link prediction trains data-parallel through the engine: `kelm kge train --nproc 2` (DDP, gloo)
ends with the same weights and the same ranks as one process, per relation included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file


def kge_train(out: Path, data_dir: Path, *extra: str) -> dict:
    args = ["kge", "train", "--dataset", "nations", "--data-dir", str(data_dir), "--model", "complex"]
    args += ["--dim", "16", "--epochs", "3", "--batch-size", "64", "--lr", "0.05", "--strategy", "ddp"]
    proc = subprocess.run(
        [sys.executable, "-c", "from kelm.cli import run; run()", *args, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KELM_PROGRESS": "0", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("training", ["1-n", "negative-sampling"])
def test_two_processes_equal_one(tmp_path: Path, data_dir: Path, training: str) -> None:
    one = kge_train(tmp_path / "one", data_dir, "--training", training)
    two = kge_train(tmp_path / "two", data_dir, "--training", training, "--nproc", "2")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    w1 = load_file(tmp_path / "one" / "model" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for key in w1:
        assert (w1[key] - w2[key]).abs().max() < 1e-4, key
    for split in ("valid", "test"):
        for metric, value in one[split].items():
            assert two[split][metric] == pytest.approx(value, abs=1e-3), (split, metric)
    rel1, rel2 = one["test_per_relation"], two["test_per_relation"]
    assert rel1.keys() == rel2.keys() and sum(m["count"] for m in rel2.values()) == 2 * 201
    for rid in rel1:
        assert rel2[rid]["mrr"] == pytest.approx(rel1[rid]["mrr"], abs=1e-3), rid
