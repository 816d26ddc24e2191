"""`kelm train` and `kelm plot`: configs and flags, bad input, run-folder contents, the exported model."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w

import kelm
from kelm.app import run_training
from kelm.app.config import KelmConfig
from kelm.cli import main
from kelm.errors import ConfigError
from kelm.lm.gpt import GPT, load_gpt
from kelm.tasks import build_task
from kelm.tasks.causal_lm import CausalLMTask

UMLS_TEXT = Path(__file__).resolve().parents[1] / "src/kelm/data/bundled/umls/entity2textlong.txt"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_config(path: Path, task: dict[str, Any] | None = None, **train: Any) -> Path:
    data = {
        "task": {"name": "causal-lm", "text": ["corpus.txt"], "seq_len": 16, "d_model": 32, "n_layer": 1, "n_head": 2}
        | (task or {}),
        "train": {"threads": 1, "batch_size": 8, "max_steps": 50, "lr": 1e-3, "seed": 3, "log_every": 2} | train,
    }
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    (root / "corpus.txt").write_bytes(UMLS_TEXT.read_bytes()[:4000])
    return root


@pytest.fixture(scope="module")
def run(folder: Path) -> Path:
    """A run from a config file (relative text path) with flags overriding some of its values."""
    cfg = write_config(folder / "run.toml", eval_every=4, checkpoint_every=4)
    out = folder / "run"
    code = main(["train", str(cfg), "--out", str(out), "--max-steps", "8", "--lr", "0.002", "--batch-size", "4"])
    assert code == 0
    return out


def error_line(capsys: pytest.CaptureFixture[str], args: list[str], code: int = 2) -> str:
    assert main(args) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# -- config and flags -------------------------------------------------------------------------


def test_flags_override_the_config_file(run: Path) -> None:
    summary = json.loads((run / "metrics.json").read_text())
    train = summary["config"]["train"]
    assert (train["max_steps"], train["lr"], train["batch_size"]) == (8, 0.002, 4)  # flags
    assert (train["seed"], train["log_every"], train["eval_every"]) == (3, 2, 4)  # file
    assert summary["steps"] == 8
    assert Path(summary["config"]["task"]["text"][0]).is_absolute()  # resolved beside the config


def test_metrics_json_records_the_run(run: Path) -> None:
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["world_size"] == 1 and summary["strategy"] == "ddp"
    assert "git_revision" in summary and (summary["git_revision"] is None or len(summary["git_revision"]) >= 7)
    assert summary["wall_seconds"] > 0 and summary["tokens_per_second"] > 0
    assert summary["config"]["task"]["d_model"] == 32
    assert set(summary["valid"]) == {"loss", "perplexity"} and math.isfinite(summary["valid"]["loss"])
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,split,name,value" and "8,valid,loss," in "\n".join(rows)


def test_exported_model_reloads_with_the_same_eval_loss(run: Path) -> None:
    model_dir = run / "model"
    assert (model_dir / "model.safetensors").stat().st_size > 0
    assert (model_dir / "config.toml").is_file()
    model = load_gpt(model_dir)
    assert isinstance(model, GPT) and model.cfg.d_model == 32

    recorded = json.loads((run / "metrics.json").read_text())
    task = build_task(recorded["config"]["task"])
    assert isinstance(task, CausalLMTask)
    data = task.eval_data()
    # the Trainer's own evaluation batches at one process: consecutive, eval batch = batch size = 4
    batches = [task.collate([data[i] for i in range(s, min(s + 4, len(data)))]) for s in range(0, len(data), 4)]
    model.eval()
    loss = task.evaluate(model, batches)["loss"]
    assert loss == pytest.approx(recorded["valid"]["loss"], rel=1e-5)


def test_run_training_library_entry(folder: Path, tmp_path: Path) -> None:
    config = {
        "task": {"text": [str(folder / "corpus.txt")], "seq_len": 16, "d_model": 32, "n_layer": 1, "n_head": 2},
        "train": {"threads": 1, "strategy": "single", "batch_size": 8, "max_steps": 3, "tensorboard": False},
    }
    summary = run_training(config, tmp_path / "lib")
    assert summary["steps"] == 3 and summary["task"] == "causal-lm"
    assert (tmp_path / "lib" / "metrics.json").is_file() and (tmp_path / "lib" / "config.toml").is_file()
    assert "RANK" not in os.environ  # the single-process group is gone again


def test_piped_stdout_gets_plain_log_lines(folder: Path, tmp_path: Path) -> None:
    """Off a terminal (nohup, SLURM, CI) a run prints one line per ``log_every`` steps, rank 0 only."""
    task = {"text": [str(folder / "corpus.txt")]}
    cfg = write_config(tmp_path / "log.toml", task, max_steps=12, log_every=4, eval_every=6, strategy="single")
    env = {k: v for k, v in os.environ.items() if k != "KELM_PROGRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(kelm.__file__).parents[1]), env.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "kelm.cli", "train", str(cfg), "--out", str(tmp_path / "run")]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    train = re.compile(r"kelm\.train: step (\d+)/12 loss \d+\.\d{4} lr \S+ tokens/s [\d,]+ eta \d+:\d\d:\d\d$")
    steps = [int(m.group(1)) for line in proc.stdout.splitlines() if (m := train.search(line))]
    assert steps == [4, 8, 12], proc.stdout
    valid = [line for line in proc.stdout.splitlines() if re.search(r"step \d+/12 valid loss \d", line)]
    assert len(valid) == 2 and "step 6/12" in valid[0], proc.stdout
    assert "trained causal-lm for 12 steps" in proc.stdout
    assert "━" not in proc.stdout + proc.stderr  # no progress bar off a terminal


def test_train_section_in_kelm_config() -> None:
    cfg = KelmConfig.model_validate({"train": {"strategy": "fsdp2"}, "task": {"name": "causal-lm"}})
    assert cfg.train.strategy == "fsdp2" and cfg.task == {"name": "causal-lm"}


# -- bad input: one line, non-zero exit ----------------------------------------------------------


def test_unknown_key_in_train_is_named(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(folder / "typo.toml", lerning_rate=0.1)
    err = error_line(capsys, ["train", str(cfg), "--out", str(folder / "typo")])
    assert "train.lerning_rate: unknown key" in err


def test_unknown_key_in_task_is_named(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(folder / "typo2.toml", task={"d_modle": 64})
    err = error_line(capsys, ["train", str(cfg), "--out", str(folder / "typo2")])
    assert "task.d_modle: unknown key" in err


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"task.name: unknown task 'kge' \(known: causal-lm, .*link-prediction"):
        build_task({"name": "kge"})


def test_missing_text_is_explained(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = error_line(capsys, ["train", "--out", str(folder / "none")])
    assert "task.text: no text files given" in err


def test_bad_strategy_names_field_and_choices(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(folder / "s.toml")
    err = error_line(capsys, ["train", str(cfg), "--out", str(folder / "s"), "--strategy", "zero3"])
    assert "train.strategy" in err and "'single', 'ddp', 'fsdp2' or 'diloco'" in err


def test_too_many_processes(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(folder / "n.toml")
    err = error_line(capsys, ["train", str(cfg), "--out", str(folder / "n"), "--nproc", "99"])
    assert "--nproc 99" in err and str(os.cpu_count()) in err


def test_single_strategy_with_two_processes(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two CPU cores")
    cfg = write_config(folder / "one.toml", strategy="single")
    err = error_line(capsys, ["train", str(cfg), "--out", str(folder / "one"), "--nproc", "2"])
    assert "strategy 'single' runs one process" in err


def test_multi_node_needs_an_endpoint(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(folder / "mn.toml")
    err = error_line(capsys, ["train", str(cfg), "--out", str(folder / "mn"), "--nnodes", "2", "--nproc", "1"])
    assert "--rdzv-endpoint" in err


# -- plot ---------------------------------------------------------------------------------------


def test_plot_writes_a_png(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", str(run)]) == 0
    default = run / "curves.png"
    assert default.read_bytes()[:8] == PNG_SIGNATURE and default.stat().st_size > 1000
    target = tmp_path / "figs" / "curves.png"
    assert main(["plot", str(run), "--out", str(target)]) == 0
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    assert str(target) in capsys.readouterr().out


def test_plot_without_metrics_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = error_line(capsys, ["plot", str(tmp_path)], code=1)
    assert "no metrics.csv" in err
