"""Checkpoints: exact resume, resharding across world sizes, atomic saves, bad checkpoints.

Tiny byte-level GPT (d_model 32, 1 layer, seq_len 16, one thread) on the first kilobyte of the
bundled UMLS descriptions: 7 batches of 8 per epoch, so 40 steps cross five epochs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kelm.app import run_training
from kelm.cli import main
from kelm.train.checkpoint import LATEST, STATE, find_checkpoint
from kelm.train.logging import read_metrics

UMLS_TEXT = Path(__file__).resolve().parents[1] / "src/kelm/data/bundled/umls/entity2textlong.txt"


def small_corpus(tmp: Path, size: int = 1100) -> Path:
    path = tmp / "corpus.txt"
    path.write_bytes(UMLS_TEXT.read_bytes()[:size])
    return path


def config(text: Path, **train: Any) -> dict[str, Any]:
    task = {"name": "causal-lm", "text": [str(text)], "seq_len": 16, "d_model": 32, "n_layer": 1, "n_head": 2}
    base = {"threads": 1, "batch_size": 8, "lr": 3e-3, "log_every": 1, "tensorboard": False}
    return {"task": task, "train": {**base, **train}}


def write_toml(path: Path, cfg: dict[str, Any]) -> Path:
    import tomli_w

    path.write_text(tomli_w.dumps(cfg), encoding="utf-8")
    return path


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert sorted(wa) == sorted(wb)
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def train_losses(run: Path) -> dict[int, float]:
    return {r.step: r.value for r in read_metrics(run) if r.split == "train" and r.name == "loss"}


def kelm_subprocess(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from kelm.cli import run; run()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "KELM_PROGRESS": "0", **(env or {})},
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """40 steps without interruption, constant learning rate."""
    out = tmp_path_factory.mktemp("straight")
    cfg = config(
        corpus, max_steps=40, schedule="constant", checkpoint_every=10, eval_every=5, early_stopping_patience=50
    )
    summary = run_training(cfg, out)
    assert summary["steps"] == 40 and summary["epoch"] >= 5
    return out


# -- exact resume -------------------------------------------------------------------------------


def test_resume_after_20_steps_matches_straight_run(straight: Path, corpus: Path, tmp_path: Path) -> None:
    cfg = config(corpus, schedule="constant", checkpoint_every=10, eval_every=5, early_stopping_patience=50)
    run_training(cfg, tmp_path, overrides={"train.max_steps": 20})
    summary = run_training(cfg, tmp_path, resume=tmp_path, overrides={"train.max_steps": 40})
    assert summary["start_step"] == 20 and summary["steps"] == 40

    ref, got = train_losses(straight), train_losses(tmp_path)
    assert sorted(got) == list(range(1, 41)) == sorted(ref)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=1e-6), step
    assert_same_weights(straight, tmp_path)
    # trainer state (early-stopping best and count, history, open log window) survives too
    ref_state = torch.load(find_checkpoint(straight) / STATE, weights_only=True)
    got_state = torch.load(find_checkpoint(tmp_path) / STATE, weights_only=True)
    assert got_state["trainer"] == ref_state["trainer"] and got_state["data"] == ref_state["data"]
    assert ref_state["trainer"]["best"] is not None


def test_crash_mid_interval_then_resume_matches(corpus: Path, tmp_path: Path) -> None:
    """Killed at step 23 (cosine schedule over 40 steps, checkpoint at 20, mid-epoch); resumed
    with no config: the recorded one is used, logged rows after step 20 are replaced."""
    cfg = write_toml(tmp_path / "run.toml", config(corpus, max_steps=40, checkpoint_every=10))
    straight = tmp_path / "straight"
    run_training(cfg, straight)

    crashed = tmp_path / "crashed"
    proc = kelm_subprocess("train", str(cfg), "--out", str(crashed), env={"KELM_FAULT_STEP": "23"})
    assert proc.returncode == -9, proc.stderr
    assert max(train_losses(crashed)) == 22
    assert main(["train", "--out", str(crashed), "--resume", str(crashed)]) == 0
    summary = json.loads((crashed / "metrics.json").read_text())
    assert summary["start_step"] == 20 and summary["steps"] == 40

    assert read_metrics(crashed) == read_metrics(straight)
    assert_same_weights(straight, crashed)


# -- resharding: 1 -> 2 and 2 -> 1 processes --------------------------------------------------


def test_checkpoints_reshard_between_world_sizes(corpus: Path, tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "run.toml", config(corpus, max_steps=12, checkpoint_every=6))
    one = tmp_path / "one"
    run_training(cfg, one, overrides={"train.strategy": "single"})

    # 1 -> 2: FSDP2 shards the world-1 checkpoint; no step runs, so the export is what was loaded
    two = tmp_path / "two"
    proc = kelm_subprocess("train", "--out", str(two), "--resume", str(one), "--nproc", "2", "--strategy", "fsdp2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("trained causal-lm") == 1  # only rank 0 prints
    assert json.loads((two / "metrics.json").read_text())["world_size"] == 2
    assert_same_weights(one, two)

    # 2 -> 1: the sharded world-2 checkpoint loads whole into one process
    back = tmp_path / "back"
    run_training(None, back, resume=two, overrides={"train.strategy": "single"})
    assert_same_weights(two, back)

    # and training continues from either side with finite loss
    onward1 = run_training(None, tmp_path / "onward1", resume=two, overrides={"train.max_steps": 16})
    assert onward1["start_step"] == 12 and math.isfinite(onward1["final_train_loss"])
    onward2 = tmp_path / "onward2"
    proc = kelm_subprocess(
        "train", "--out", str(onward2), "--resume", str(one), "--nproc", "2", "--strategy", "fsdp2", "--max-steps", "16"
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((onward2 / "metrics.json").read_text())
    assert summary["start_step"] == 12 and summary["steps"] == 16 and math.isfinite(summary["final_train_loss"])


# -- atomic saves ---------------------------------------------------------------------------------


def test_crash_while_saving_leaves_last_complete_checkpoint(corpus: Path, tmp_path: Path) -> None:
    cfg = write_toml(tmp_path / "run.toml", config(corpus, max_steps=30, checkpoint_every=10))
    run = tmp_path / "run"
    env = {"KELM_FAULT_STEP": "20", "KELM_FAULT_AT": "checkpoint"}
    proc = kelm_subprocess("train", str(cfg), "--out", str(run), env=env)
    assert proc.returncode == -9, proc.stderr

    ckpts = run / "checkpoints"
    partial = ckpts / "step_00000020.partial"
    assert partial.is_dir() and (partial / ".metadata").is_file()  # written, never committed
    assert not (ckpts / "step_00000020").exists()
    assert (ckpts / LATEST).read_text().strip() == "step_00000010"
    assert find_checkpoint(run) == ckpts / "step_00000010"

    summary = run_training(None, run, resume=run)
    assert summary["start_step"] == 10 and summary["steps"] == 30
    assert not partial.exists()  # cleared by the next save
    assert (ckpts / LATEST).read_text().strip() == "step_00000030"


# -- bad checkpoints: one line, non-zero exit ------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("finished")
    cfg = write_toml(root / "run.toml", config(corpus, max_steps=6, checkpoint_every=3))
    run_training(cfg, root / "run")
    return cfg, root / "run"


def _damaged(finished: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    cfg, run = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return cfg, copy


def _one_line_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncate-distcp", "__0_0.distcp has 100 bytes"),
        ("delete-metadata", ".metadata is missing"),
        ("garbage-metadata", "cannot read .metadata"),
        ("delete-state", "state.pt is missing"),
    ],
)
def test_corrupt_checkpoint_is_one_line_error(
    damage: str, expected: str, finished: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, run = _damaged(finished, tmp_path)
    ckpt = find_checkpoint(run)
    if damage == "truncate-distcp":
        with (ckpt / "__0_0.distcp").open("r+b") as fh:
            fh.truncate(100)
    elif damage == "delete-metadata":
        (ckpt / ".metadata").unlink()
    elif damage == "garbage-metadata":
        size = (ckpt / ".metadata").stat().st_size
        (ckpt / ".metadata").write_bytes(b"\0" * size)  # same size: only DCP's reader notices
    else:
        (ckpt / STATE).unlink()
    err = _one_line_error(capsys, ["train", str(cfg), "--out", str(run), "--resume", str(run), "--max-steps", "9"])
    assert "corrupt" in err and expected in err


def test_incomplete_or_missing_checkpoint_is_one_line_error(
    finished: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, _ = finished
    err = _one_line_error(capsys, ["train", str(cfg), "--out", str(tmp_path / "x"), "--resume", str(tmp_path / "nope")])
    assert "does not exist" in err
    (tmp_path / "step_00000005.partial").mkdir()
    err = _one_line_error(
        capsys, ["train", str(cfg), "--out", str(tmp_path / "x"), "--resume", str(tmp_path / "step_00000005.partial")]
    )
    assert "incomplete checkpoint" in err


def test_resume_into_another_model_is_refused(
    finished: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = finished
    text = small_corpus(tmp_path)
    for change, detail in ((("d_model", 64), "tok.weight has shape [256, 32]"), (("n_layer", 2), "blocks.1.")):
        cfg = config(text, max_steps=9)
        cfg["task"][change[0]] = change[1]
        path = write_toml(tmp_path / f"{change[0]}.toml", cfg)
        err = _one_line_error(capsys, ["train", str(path), "--out", str(tmp_path / "new"), "--resume", str(run)])
        assert "saved from another model" in err and detail in err


def test_fresh_run_into_a_run_folder_is_refused(
    finished: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, run = finished
    err = _one_line_error(capsys, ["train", str(cfg), "--out", str(run)])
    assert "already holds checkpoints" in err and "--resume" in err
