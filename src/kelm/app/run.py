"""From a config to a finished run: resolve the config, build the task, check a resume, train."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pydantic import ValidationError

from kelm.app.config import KelmConfig
from kelm.config import Section, format_validation_error, read_toml, set_dotted
from kelm.errors import ConfigError
from kelm.tasks import DEFAULT_TASK, TaskSpec, task_train_defaults, validate_task
from kelm.train.checkpoint import check_compatible, find_checkpoint, model_fingerprint, read_extra, read_meta
from kelm.train.distributed import shutdown
from kelm.train.logging import require_tensorboard
from kelm.train.task import Task
from kelm.train.trainer import RUN_CONFIG, Trainer, plan_resume, run_dir_of


@dataclass
class RunConfig:
    """A validated run: the whole config, the task's own validated section, and where it came from."""

    config: KelmConfig
    task_spec: TaskSpec
    task_config: Section
    source: str

    def as_dict(self) -> dict[str, Any]:
        """What the run records (``config.toml``, ``metrics.json``): the train and task sections."""
        return {"train": self.config.train.model_dump(), "task": self.task_config.model_dump()}

    def build_task(self) -> Task:
        return self.task_spec.factory(self.task_config)


def _resume_config(resume: str | Path) -> Path | None:
    """The ``config.toml`` of the run a resume path belongs to, if it has one."""
    run_dir = run_dir_of(find_checkpoint(Path(resume)))
    path = run_dir / RUN_CONFIG if run_dir is not None else None
    return path if path is not None and path.is_file() else None


def load_run_config(
    config: dict[str, Any] | str | Path | None,
    overrides: dict[str, Any] | None = None,
    resume: str | Path | None = None,
) -> RunConfig:
    """Validate a run's config: a dict or a TOML file, then dotted-key ``overrides`` (None skipped).

    Relative ``task.text`` paths in a file are relative to the file's folder. The task's
    ``train_defaults`` fill the ``[train]`` keys that neither the config nor the overrides set.
    Without a config, a resumed run starts from the config its checkpoint's run recorded, as it is
    (no task defaults: the run keeps the settings it was started with)."""
    saved = config is None and resume is not None
    if saved:
        config = _resume_config(resume)
        saved = config is not None
    if isinstance(config, dict):
        data, source = copy.deepcopy(config), "config"
    elif config is not None:
        path = Path(config)
        data, source = read_toml(path), str(path)
        texts = data.get("task", {}).get("text") if isinstance(data.get("task"), dict) else None
        if isinstance(texts, list):
            base = path.parent.absolute()
            data["task"]["text"] = [os.path.normpath(base / t) if isinstance(t, str) else t for t in texts]
    else:
        data, source = {}, "config"
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    if not saved:
        apply_task_defaults(data)
    try:
        cfg = KelmConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None
    spec, task_cfg = validate_task(cfg.task, source)
    if cfg.train.tensorboard:
        require_tensorboard()  # before any process starts: rank 0 alone would fail later
    return RunConfig(cfg, spec, task_cfg, source)


def apply_task_defaults(data: dict[str, Any]) -> None:
    """Fill ``data``'s ``[train]`` table with its task's defaults, under the values already set."""
    task, train = data.get("task"), data.get("train")
    if not isinstance(task, dict) or not isinstance(train if train is not None else {}, dict):
        return  # validation reports the malformed table
    name = task.get("name", DEFAULT_TASK)
    defaults = task_train_defaults(name) if isinstance(name, str) else {}
    if defaults:
        data["train"] = {**defaults, **(train or {})}


def preflight(run: RunConfig, out_dir: str | Path, resume: str | Path | None, world_size: int) -> None:
    """Checks a launcher makes before starting processes, so bad input fails fast in one line."""
    batch = run.config.train.batch_size
    if batch % world_size:
        raise ConfigError(f"train.batch_size ({batch}) must be divisible by the number of processes ({world_size})")
    if run.config.train.strategy == "single" and world_size > 1:
        raise ConfigError(f"strategy 'single' runs one process, but {world_size} were asked for")
    task = run.build_task()
    task.configure(run.config.train)  # e.g. a model too big for memory is refused here
    ckpt = plan_resume(Path(out_dir), Path(resume) if resume is not None else None)
    if ckpt is None:
        return
    task.check_resume(read_extra(ckpt).get("task") or {}, ckpt)
    meta = read_meta(ckpt)
    with torch.device("meta"):
        fingerprint = model_fingerprint(task.build_model())
    check_compatible(ckpt, meta, fingerprint)


def run_training(
    config: dict[str, Any] | str | Path | RunConfig | None,
    out_dir: str | Path,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train in this process (or as one rank of a torchrun job); returns the run summary."""
    run = config if isinstance(config, RunConfig) else load_run_config(config, overrides, resume)
    task = run.build_task()
    owns_group = not dist.is_initialized()
    trainer = Trainer(task, run.config.train, out_dir, resume=resume, run_config=run.as_dict())
    try:
        return trainer.fit()
    finally:
        trainer.close()
        if owns_group:
            shutdown()
