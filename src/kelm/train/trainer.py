"""The one training loop. Every task and every world size runs through `Trainer.fit`:
``_begin`` (set-up, restore) → ``train_step`` with callbacks after each step → ``finish``
(final evaluation, checkpoint, test, export) → ``_summary`` (metrics.json)."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from kelm.artifacts import write_toml
from kelm.errors import ConfigError
from kelm.train import clipping, comm
from kelm.train.callbacks import TrainerCallback, TrainerControl, default_callbacks
from kelm.train.checkpoint import (
    CheckpointError,
    checkpoint_dirs,
    find_checkpoint,
    load_checkpoint,
    model_fingerprint,
    read_extra,
    save_checkpoint,
)
from kelm.train.config import TrainConfig
from kelm.train.data import ShardedBatches, eval_batches
from kelm.train.distributed import DistInfo, init_distributed
from kelm.train.export import export_model
from kelm.train.logging import RunLogger, git_revision, timer, write_run_summary
from kelm.train.schedule import build_scheduler, warmup_of
from kelm.train.strategies import build_strategy
from kelm.train.task import Batch, Task


@dataclass
class TrainState:
    """What besides weights and optimizer a checkpoint must hold to continue exactly."""

    step: int = 0
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    # (sum of loss x weight, sum of weight) since the last log line, summed over ranks
    window: list[float] = field(default_factory=lambda: [0.0, 0.0])
    history: list[dict[str, float]] = field(default_factory=list)


RUN_CONFIG = "config.toml"


def run_dir_of(ckpt: Path) -> Path | None:
    """The run folder a checkpoint folder belongs to (``RUN/checkpoints/step_N``), if it does."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None


def plan_resume(out_dir: Path, resume: Path | None) -> Path | None:
    """The checkpoint a run into ``out_dir`` starts from, or None for a fresh start.

    After an elastic restart (``TORCHELASTIC_RESTART_COUNT > 0``) the run's own latest
    checkpoint wins. A fresh run, or one resumed from elsewhere, into a folder that already holds
    checkpoints is refused rather than mixing two runs."""
    own = out_dir / "checkpoints"
    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    if restarted and checkpoint_dirs(own):
        return find_checkpoint(out_dir)
    ckpt = find_checkpoint(resume) if resume is not None else None
    source = run_dir_of(ckpt) if ckpt is not None else None
    continues_here = source is not None and source.resolve() == out_dir.resolve()
    if checkpoint_dirs(own) and not continues_here:
        raise ConfigError(
            f"{out_dir} already holds checkpoints of a run; pass --resume {out_dir} to continue it "
            "or choose another output folder"
        )
    return ckpt


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def parameter_groups(model: nn.Module, lr: float, lr_scale: Any = None) -> list[dict[str, Any]]:
    """Trainable parameters in one optimizer group per learning-rate scale (``lr_scale(name)``,
    e.g. a task's fresh heads learning faster than a pretrained encoder); one group without it."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(float(lr_scale(name)) if lr_scale else 1.0, []).append(p)
    return [{"params": ps, "lr": lr * scale} for scale, ps in sorted(groups.items())]


def build_optimizer(cfg: TrainConfig, params: list[nn.Parameter] | list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The configured optimizer; fused kernels (one pass over each parameter) where they apply.

    ``params`` are parameters or groups (`parameter_groups`). Fused Adam/AdamW/Adagrad run on CPU
    and CUDA for plain tensors; sharded DTensor parameters (FSDP2) take the multi-tensor
    ``foreach`` path instead."""
    from torch.distributed.tensor import DTensor

    flat = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    fused = {"fused": True} if flat and not any(isinstance(p, DTensor) for p in flat) else {}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def autocast_context(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on devices that support it (``auto``: CUDA with bf16), else nothing."""
    use = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class Trainer:
    """Trains ``task`` with ``cfg`` into ``out_dir``: checkpoints, logs, metrics and the final model."""

    def __init__(
        self,
        task: Task,
        cfg: TrainConfig,
        out_dir: str | Path,
        resume: str | Path | None = None,
        run_config: dict[str, Any] | None = None,
        callbacks: list[TrainerCallback] | None = None,
    ):
        self.task, self.cfg, self.out_dir = task, cfg, Path(out_dir)
        #: The engine's callbacks (logging, early stopping, fault injection), then the caller's.
        self.callbacks = default_callbacks() + list(callbacks or [])
        self.resume = Path(resume) if resume is not None else None
        self.run_config = run_config or {"train": cfg.model_dump()}

    def close(self) -> None:
        """Release the model, optimizer and strategy now, while the process group is alive.

        A DDP or FSDP model holds the group and sits in reference cycles; left to the garbage
        collector it may be freed during interpreter shutdown, where gloo's threads abort."""
        for name in ("model", "optimizer", "scheduler", "strategy", "loader", "eval_set"):
            self.__dict__.pop(name, None)
        gc.collect()

    # -- set-up ---------------------------------------------------------------------------
    def _setup(self, info: DistInfo) -> None:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        comm.install()
        seed_everything(cfg.seed)
        self.strategy = build_strategy(cfg, info, self.task.parallel_plan())
        self.task.configure(cfg)
        base = self.task.build_model().to(info.device)
        self.fingerprint = model_fingerprint(base)
        self.model = self.strategy.wrap(base)
        self.optimizer = build_optimizer(cfg, parameter_groups(self.model, cfg.lr, self.task.lr_scale))
        self.strategy.prepare_optimizer(self.model, self.optimizer)
        self.loader = ShardedBatches(
            self.task.train_data(),
            self.task.collate,
            cfg.batch_size,
            info.rank,
            info.world_size,
            cfg.seed,
            batch_random=self.task.uses_batch_random,
        )
        steps_per_epoch = self.loader.batches_per_epoch() // cfg.grad_accum
        if steps_per_epoch == 0:
            raise ConfigError("train.batch_size x train.grad_accum exceeds one epoch of data")
        self.total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
        warmup = warmup_of(cfg.warmup_steps, cfg.warmup_ratio, self.total_steps)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, warmup, cfg.schedule, cfg.min_lr_ratio)
        self.state = TrainState()
        self.eval_set = self._eval_batches(self.task.eval_data(), info)
        self.test_set = self._eval_batches(self.task.test_data(), info)

    def _extra_state(self) -> dict[str, Any]:
        """Rank 0's part of a checkpoint besides model and optimizer."""
        return {
            "trainer": asdict(self.state),
            "scheduler": self.scheduler.state_dict(),
            "data": self.loader.position.state_dict(),
            "strategy": {"name": self.cfg.strategy, "state": self.strategy.state_dict()},
            "task": self.task.resume_state(),
        }

    def _local_state(self, info: DistInfo) -> dict[str, Any] | None:
        """Per-rank state (DiLoCo replicas, PowerSGD error feedback), restored at the same world size."""
        return self.strategy.local_state_dict(self.model, self.optimizer)

    def _save(self, info: DistInfo, window: torch.Tensor) -> None:
        # The open log window is summed onto rank 0, so it survives a change of world size.
        dist.all_reduce(window)
        if not info.is_main:
            window.zero_()
        self.state.window = window.tolist()
        save_checkpoint(
            self.out_dir / "checkpoints",
            self.state.step,
            self.model,
            self.optimizer,
            self._extra_state(),
            self.fingerprint,
            self.cfg.keep_checkpoints,
            local=self._local_state(info),
        )
        self._saved_step = self.state.step

    def _restore(self, ckpt: Path, info: DistInfo) -> int:
        self.task.check_resume(read_extra(ckpt).get("task") or {}, ckpt)
        extra, local, saved_world = load_checkpoint(ckpt, self.model, self.optimizer, self.fingerprint)
        saved_strategy = extra["strategy"]["name"]
        if saved_strategy == self.cfg.strategy:
            self.strategy.load_state_dict(extra["strategy"]["state"])
        elif self.strategy.state_dict():
            raise CheckpointError(
                f"checkpoint {ckpt} was saved with strategy '{saved_strategy}'; strategy "
                f"'{self.cfg.strategy}' continues only from its own checkpoints"
            )
        self.state = TrainState(**extra["trainer"])
        if not info.is_main:
            self.state.window = [0.0, 0.0]
        self.scheduler.load_state_dict(extra["scheduler"])
        self.loader.position.load_state_dict(extra["data"])
        if local is not None:
            self.strategy.load_local_state_dict(self.model, self.optimizer, local)
        if saved_world != info.world_size:
            # RNG streams are per rank; at a new world size each rank reseeds from (seed, step, rank).
            seed_everything(self.cfg.seed + 7919 * self.state.step + info.rank)
        source = run_dir_of(ckpt)
        if source is not None and source.resolve() == self.out_dir.resolve():
            self._saved_step = self.state.step  # this folder already holds it
        return self.state.step

    # -- pieces of the loop -----------------------------------------------------------------
    def _micro_batches(self) -> Any:
        """Endless stream of this rank's micro-batches, advancing epochs."""
        while True:
            yield from self.loader

    def _eval_batches(self, data: Any, info: DistInfo) -> list[Batch] | None:
        if data is None:
            return None
        size = self.cfg.eval_batch_size or self.cfg.batch_size
        shares = self.strategy.collective_forward
        return eval_batches(data, self.task.collate, size, info.rank, info.world_size, equal_shares=shares)

    def _evaluate(self, info: DistInfo, batches: list[Batch] | None = None) -> dict[str, float]:
        """Metrics over the validation set (or ``batches``), combined over ranks weighted by batch size."""
        batches = self.eval_set if batches is None else batches
        if batches is None:
            return {}
        self.model.eval()
        with torch.no_grad(), autocast_context(self.cfg, info.device):
            local = self.task.evaluate(self.model, [_to(b, info.device) for b in batches])
        self.model.train()
        n = float(sum(self.task.batch_weight(b) for b in batches))
        keys = sorted(local)
        buf = torch.tensor([local[k] * n for k in keys] + [n], dtype=torch.float64)
        dist.all_reduce(buf)
        return self.task.finalize_metrics({k: float(buf[i] / buf[-1]) for i, k in enumerate(keys)})

    def _breakdown(self, info: DistInfo) -> dict[str, Any]:
        """The task's finer report of the last evaluation, from every rank's details."""
        parts: list[Any] = [None] * info.world_size
        dist.all_gather_object(parts, self.task.eval_details())
        return self.task.breakdown(parts) if any(p is not None for p in parts) else {}

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps`` (or an early stop), evaluate, save, export; returns the summary
        also written to ``metrics.json``."""
        self._begin()
        try:
            for cb in self.callbacks:
                cb.on_train_begin(self)
            while self.state.step < self.total_steps and not self.control.should_stop:
                self.train_step()
                step = self.state.step
                for cb in self.callbacks:
                    cb.on_step_end(self, step)
                self._maybe_evaluate(step)
                cfg = self.cfg
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < self.total_steps:
                    self._save(self.info, self.window)
            self.loop_seconds, self.loop_cpu_seconds = timer() - self.wall0, time.process_time() - self.cpu0
            for cb in self.callbacks:
                cb.on_train_end(self)
            self.finish()
        finally:
            self.logger.close()
        return self._summary()

    def train_only(self, prepare: Callable[[Trainer], None] | None = None) -> dict[str, float]:
        """The training loop alone, for a caller that takes the model as trained (a federated
        client's round): no callbacks, evaluation, checkpoint, export or summary. ``prepare`` sees
        the set-up trainer first (to load weights, hook the optimizer). Returns the steps, the
        summed batch weight and the mean training loss; the model stays in ``self.model`` until
        `close`."""
        self._begin()
        try:
            if prepare is not None:
                prepare(self)
            while self.state.step < self.total_steps:
                self.train_step()
        finally:
            self.logger.close()
        loss, weight = self.window.tolist()
        return {"steps": float(self.state.step), "weight": weight, "loss": loss / weight if weight else math.nan}

    def _begin(self) -> None:
        """Process group, model, optimizer, data; the checkpoint to continue from; the logger."""
        info = self.info = init_distributed()
        self.ckpt = plan_resume(self.out_dir, self.resume)
        self._setup(info)
        self._saved_step = -1
        self.start_step = self._restore(self.ckpt, info) if self.ckpt is not None else 0
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_toml(self.out_dir / RUN_CONFIG, self.run_config)
        self.logger = RunLogger(
            self.out_dir,
            info.is_main,
            self.cfg.tensorboard,
            self.total_steps,
            self.start_step,
            history_from=run_dir_of(self.ckpt) if self.ckpt is not None else None,
        )
        self.control = TrainerControl()
        self.bytes_at_start = comm.bytes_sent()
        self.wall0, self.cpu0 = timer(), time.process_time()
        self.tokens_this_run = 0
        self._stream = self._micro_batches()
        # summed on the device and read only when logged: no host sync per step
        self.window = torch.tensor(self.state.window, dtype=torch.float64, device=info.device)
        self.final_eval: dict[str, float] = {}
        self.model.train()

    def train_step(self) -> None:
        """One optimizer step over ``grad_accum`` micro-batches (clipping, schedule, strategy hook)."""
        cfg, info = self.cfg, self.info
        for micro in range(cfg.grad_accum):
            batch = _to(next(self._stream), info.device)
            last = micro == cfg.grad_accum - 1
            with self.strategy.sync(self.model, last), autocast_context(cfg, info.device):
                loss, _ = self.task.loss(self.model, batch)
            (loss / cfg.grad_accum).backward()
            w = self.task.batch_weight(batch)
            self.window[0] += loss.detach().double() * w
            self.window[1] += w
            self.tokens_this_run += self.task.tokens(batch)
        if cfg.clip_grad_norm is not None:
            norm = self.strategy.grad_norm(self.model)
            clipping.clip_gradients(self.optimizer, self.model.parameters(), norm, cfg.clip_grad_norm)
        self.optimizer.step()
        clipping.after_step(self.optimizer)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.strategy.after_step(self.model, self.state.step)

    def _maybe_evaluate(self, step: int) -> None:
        """Every ``eval_every`` steps before the last: validation metrics, logged and handed to callbacks."""
        if not self.cfg.eval_every or step % self.cfg.eval_every or step >= self.total_steps:
            return
        metrics = self._evaluate(self.info)
        self.logger.log(step, "valid", metrics)
        for cb in self.callbacks:
            cb.on_evaluate(self, step, metrics)

    def finish(self) -> None:
        """The end of a run: the strategy's last sync, the final evaluation, the last checkpoint, the
        test split and the exported model."""
        info = self.info
        if self.strategy.finish(self.model, self.state.step):
            self.final_eval, self._saved_step = {}, None  # parameters changed: evaluate and save again
        if not self.final_eval:
            self.final_eval = self._evaluate(info)
            if self.final_eval:
                self.logger.log(self.state.step, "valid", self.final_eval)
        if self._saved_step != self.state.step:
            self._save(info, self.window)
        self.test_metrics = self._evaluate(info, self.test_set) if self.test_set is not None else {}
        self.test_breakdown = self._breakdown(info) if self.test_metrics else {}
        if self.test_metrics:
            self.logger.log(self.state.step, "test", self.test_metrics)
        model_spec = {k: v for k, v in self.task.model_config().items() if k != "task"}
        export_model(self.out_dir / "model", self.model, {**self.run_config, **model_spec})
        if info.is_main:
            self.task.save_artifacts(self.out_dir / "model")

    def _summary(self) -> dict[str, Any]:
        """``metrics.json``: the run's config, counts, times, throughput and metrics (written on rank 0)."""
        info, cfg = self.info, self.cfg
        wall = timer() - self.wall0
        tok = torch.tensor([self.tokens_this_run, comm.bytes_sent() - self.bytes_at_start], dtype=torch.float64)
        dist.all_reduce(tok)
        summary = {
            "task": self.task.name,
            "strategy": cfg.strategy,
            "world_size": info.world_size,
            "git_revision": git_revision() if info.is_main else None,
            "steps": self.state.step,
            "total_steps": self.total_steps,
            "start_step": self.start_step,
            "resumed_from": str(self.ckpt) if self.ckpt is not None else None,
            "epoch": self.loader.position.epoch,
            "stopped_early": self.control.should_stop,
            "best_step": self.state.best_step,
            "wall_seconds": wall,
            "loop_seconds": self.loop_seconds,  # the training loop alone: no final evaluation, save or export
            "loop_cpu_seconds": self.loop_cpu_seconds,  # its CPU time (all threads): steadier on a busy machine
            "tokens": int(tok[0]),
            "tokens_per_second": float(tok[0]) / wall if wall > 0 else math.nan,
            "bytes_communicated": int(tok[1]),
            "final_train_loss": self.state.history[-1]["loss"] if self.state.history else None,
            "valid": self.final_eval,
            "test": self.test_metrics,
            **{f"test_{k}": v for k, v in self.test_breakdown.items()},
            "config": self.run_config,
        }
        if info.is_main:
            write_run_summary(self.out_dir, summary)
        return summary


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
