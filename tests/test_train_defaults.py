"""Per-task-family ``[train]`` defaults: applied under the config file and the flags, never to a
resumed run's saved config, and never changing what a shipped config trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w

import kelm.app.run as run_mod
from kelm.app.run import load_run_config
from kelm.cli import main
from kelm.config import read_toml
from kelm.errors import ConfigError
from kelm.tasks import task_train_defaults
from kelm.train.config import FINETUNE_DEFAULTS, KGE_DEFAULTS, PRETRAIN_DEFAULTS, TrainConfig
from kelm.train.export import write_toml
from kelm.train.schedule import warmup_of

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CLASSIFICATION = {"name": "classification", "dataset": "poem-sentiment"}
LINK = {"name": "link-prediction", "dataset": "umls"}


def train_of(task: dict, train: dict | None = None, **overrides: object) -> TrainConfig:
    data = {"task": task} | ({"train": train} if train is not None else {})
    return load_run_config(data, {f"train.{k}": v for k, v in overrides.items()}).config.train


def test_fine_tuning_takes_the_hf_trainer_recipe() -> None:
    train = train_of(CLASSIFICATION)
    assert (train.lr, train.schedule, train.warmup_ratio, train.weight_decay) == (5e-5, "linear", 0.06, 0.0)
    assert train.optimizer == "adamw" and train.clip_grad_norm == 1.0
    for name in ("ner", "qa", "kg-enhanced-classification", "text-kgc"):
        assert task_train_defaults(name) == FINETUNE_DEFAULTS, name


def test_pretraining_and_kge_have_their_own_defaults() -> None:
    for name in ("mlm", "clm"):
        train = train_of({"name": name, "text": ["corpus.txt"]})
        assert (
            (train.lr, train.schedule, train.warmup_ratio)
            == (5e-4, "cosine", 0.05)
            == tuple(PRETRAIN_DEFAULTS[k] for k in ("lr", "schedule", "warmup_ratio"))
        )
    train = train_of(LINK)
    assert (train.optimizer, train.lr, train.schedule) == ("adam", 1e-3, "constant")
    assert train.clip_grad_norm is None and train.warmup_ratio == 0.0  # no clipping, as LibKGE and PyKEEN
    assert task_train_defaults("frozen-text-kgc") == KGE_DEFAULTS
    assert task_train_defaults("kgqa") == task_train_defaults("causal-lm") == {}
    engine = TrainConfig()
    causal = train_of({"name": "causal-lm", "text": ["corpus.txt"]})
    assert (causal.lr, causal.schedule) == (engine.lr, engine.schedule) == (1e-3, "cosine")


def test_the_config_file_and_the_flags_win(tmp_path: Path) -> None:
    train = train_of(CLASSIFICATION, {"lr": 1e-4, "schedule": "cosine"})
    assert (train.lr, train.schedule, train.warmup_ratio) == (1e-4, "cosine", 0.06)
    assert train_of(CLASSIFICATION, {"lr": 1e-4}, lr=2e-5, warmup_ratio=0.1).lr == 2e-5
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps({"task": LINK, "train": {"optimizer": "adagrad", "lr": 0.1}}), encoding="utf-8")
    train = load_run_config(path, {"train.epochs": 3}).config.train
    assert (train.optimizer, train.lr, train.schedule, train.epochs) == ("adagrad", 0.1, "constant", 3)


def test_a_resumed_run_keeps_its_saved_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A saved ``config.toml`` from before a default existed trains on with what it recorded."""
    saved = tmp_path / "config.toml"
    recorded = TrainConfig(lr=1e-3, schedule="cosine").model_dump(exclude={"warmup_ratio"})
    write_toml(saved, {"task": CLASSIFICATION, "train": recorded})
    monkeypatch.setattr(run_mod, "_resume_config", lambda resume: saved)
    train = load_run_config(None, {"train.max_steps": 40}, resume=tmp_path).config.train
    assert (train.lr, train.schedule, train.warmup_ratio, train.max_steps) == (1e-3, "cosine", 0.0, 40)


def test_warmup_steps_win_over_the_ratio() -> None:
    assert warmup_of(0, 0.06, 135) == 9  # rounded up, as the HF Trainer does
    assert warmup_of(50, 0.06, 135) == 50
    assert warmup_of(0, 0.0, 135) == 0


def test_an_unknown_task_still_fails_in_one_line() -> None:
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        train_of({"name": "nope"})


@pytest.mark.parametrize(
    "path", sorted(p for p in CONFIGS.rglob("*.toml") if "kgqa" not in p.parts), ids=lambda p: p.stem
)
def test_shipped_configs_train_as_before(path: Path) -> None:
    """The task defaults change nothing a shipped config trains with (its file alone did before),
    except that KGE configs train unclipped unless they ask for clipping."""
    new = load_run_config(path).config.train
    data = read_toml(path)
    old = TrainConfig.model_validate(data.get("train", {}))
    assert warmup_of(new.warmup_steps, new.warmup_ratio, 1000) == warmup_of(old.warmup_steps, old.warmup_ratio, 1000)
    changed = {"warmup_ratio"}
    if task_train_defaults(data["task"].get("name", "")) == KGE_DEFAULTS and "clip_grad_norm" not in data.get(
        "train", {}
    ):
        assert new.clip_grad_norm is None
        changed.add("clip_grad_norm")
    assert new.model_dump(exclude=changed) == old.model_dump(exclude=changed)


def test_help_names_the_task_defaults(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    for command in (["finetune"], ["kge", "train"], ["train"]):
        assert main([*command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "default: the task's, 5e-5 for fine-tuning" in text and "1e-3 for KGE" in text, command
