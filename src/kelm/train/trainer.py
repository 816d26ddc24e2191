"""The one training loop. Every task and every world size runs through `Trainer.fit`."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from kelm.errors import ConfigError
from kelm.tasks.base import Batch, Task
from kelm.train import clipping, comm
from kelm.train.checkpoint import (
    CheckpointError,
    checkpoint_dirs,
    find_checkpoint,
    load_checkpoint,
    model_fingerprint,
    save_checkpoint,
)
from kelm.train.config import TrainConfig
from kelm.train.data import ShardedBatches, eval_batches
from kelm.train.distributed import DistInfo, init_distributed
from kelm.train.export import export_model, write_toml
from kelm.train.fault import maybe_fail
from kelm.train.logging import RunLogger, git_revision, timer, write_run_summary
from kelm.train.schedule import build_scheduler, warmup_of
from kelm.train.strategies import build_strategy


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


def build_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The configured optimizer; fused kernels (one pass over each parameter) where they apply.

    Fused Adam/AdamW/Adagrad run on CPU and CUDA for plain tensors; sharded DTensor parameters
    (FSDP2) take the multi-tensor ``foreach`` path instead."""
    from torch.distributed.tensor import DTensor

    fused = {"fused": True} if params and not any(isinstance(p, DTensor) for p in params) else {}
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
    ):
        self.task, self.cfg, self.out_dir = task, cfg, Path(out_dir)
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
        self.strategy = build_strategy(cfg, info)
        self.task.configure(cfg)
        base = self.task.build_model().to(info.device)
        self.fingerprint = model_fingerprint(base)
        self.model = self.strategy.wrap(base)
        self.optimizer = build_optimizer(cfg, [p for p in self.model.parameters() if p.requires_grad])
        self.strategy.prepare_optimizer(self.model, self.optimizer)
        self.loader = ShardedBatches(
            self.task.train_data(), self.task.collate, cfg.batch_size, info.rank, info.world_size, cfg.seed
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

    def _should_stop(self, metrics: dict[str, float]) -> bool:
        cfg, st = self.cfg, self.state
        value = metrics.get(self.task.monitor)
        if value is None or cfg.early_stopping_patience is None:
            return False
        better = st.best is None or (value < st.best if self.task.monitor_mode == "min" else value > st.best)
        if better:
            st.best, st.best_step, st.bad_evals = value, st.step, 0
            if cfg.restore_best:
                self._best_weights = {k: _snapshot(v) for k, v in self.model.state_dict().items()}
            return False
        st.bad_evals += 1
        return self._patience_exhausted()

    def _patience_exhausted(self) -> bool:
        patience = self.cfg.early_stopping_patience
        return patience is not None and self.state.bad_evals >= patience

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        info = init_distributed()
        cfg = self.cfg
        ckpt = plan_resume(self.out_dir, self.resume)
        self._setup(info)
        self._saved_step = -1
        start_step = self._restore(ckpt, info) if ckpt is not None else 0
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_toml(self.out_dir / RUN_CONFIG, self.run_config)
        logger = RunLogger(
            self.out_dir,
            info.is_main,
            cfg.tensorboard,
            self.total_steps,
            start_step,
            history_from=run_dir_of(ckpt) if ckpt is not None else None,
        )
        bytes_at_start = comm.bytes_sent()
        wall0, cpu0 = timer(), time.process_time()
        tokens_this_run = 0
        stream = self._micro_batches()
        # summed on the device and read only when logged: no host sync per step
        window = torch.tensor(self.state.window, dtype=torch.float64, device=info.device)
        final_eval: dict[str, float] = {}
        stopped_early = self._patience_exhausted()
        self.model.train()
        try:
            while self.state.step < self.total_steps and not stopped_early:
                for micro in range(cfg.grad_accum):
                    batch = _to(next(stream), info.device)
                    last = micro == cfg.grad_accum - 1
                    with self.strategy.sync(self.model, last), autocast_context(cfg, info.device):
                        loss, _ = self.task.loss(self.model, batch)
                    (loss / cfg.grad_accum).backward()
                    w = self.task.batch_weight(batch)
                    window[0] += loss.detach().double() * w
                    window[1] += w
                    tokens_this_run += self.task.tokens(batch)
                if cfg.clip_grad_norm is not None:
                    norm = self.strategy.grad_norm(self.model)
                    clipping.clip_gradients(self.optimizer, self.model.parameters(), norm, cfg.clip_grad_norm)
                self.optimizer.step()
                clipping.after_step(self.optimizer)
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.step += 1
                step = self.state.step
                self.strategy.after_step(self.model, step)
                maybe_fail("step", step, info.rank)

                if step % cfg.log_every == 0 or step == self.total_steps:
                    dist.all_reduce(window)
                    train_loss = float(window[0] / window[1])
                    window.zero_()
                    lr = self.scheduler.get_last_lr()[0]
                    logger.log(step, "train", {"loss": train_loss, "lr": lr})
                    self.state.history.append({"step": step, "loss": train_loss})
                    rate = tokens_this_run * info.world_size / max(timer() - wall0, 1e-9)
                    logger.progress(step, {"loss": train_loss, "lr": lr, "tok/s": rate})
                if cfg.eval_every and step % cfg.eval_every == 0 and step < self.total_steps:
                    metrics = self._evaluate(info)
                    logger.log(step, "valid", metrics)
                    if self._should_stop(metrics):
                        stopped_early = True
                        final_eval = metrics
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < self.total_steps:
                    self._save(info, window)
            loop_seconds, loop_cpu_seconds = timer() - wall0, time.process_time() - cpu0
            if self.strategy.finish(self.model, self.state.step):
                final_eval, self._saved_step = {}, None  # parameters changed: evaluate and save again
            best_weights = self.__dict__.pop("_best_weights", None)
            if stopped_early and best_weights is not None:
                self.model.load_state_dict(best_weights)  # the model of the best evaluation
                final_eval, self._saved_step = {}, None
            if not final_eval:
                final_eval = self._evaluate(info)
                if final_eval:
                    logger.log(self.state.step, "valid", final_eval)
            if self._saved_step != self.state.step:
                self._save(info, window)
            test_metrics = self._evaluate(info, self.test_set) if self.test_set is not None else {}
            test_breakdown = self._breakdown(info) if test_metrics else {}
            if test_metrics:
                logger.log(self.state.step, "test", test_metrics)
            model_spec = {k: v for k, v in self.task.model_config().items() if k != "task"}
            export_model(self.out_dir / "model", self.model, {**self.run_config, **model_spec})
            if info.is_main:
                self.task.save_artifacts(self.out_dir / "model")
        finally:
            logger.close()
        wall = timer() - wall0
        tok = torch.tensor([tokens_this_run, comm.bytes_sent() - bytes_at_start], dtype=torch.float64)
        dist.all_reduce(tok)
        summary = {
            "task": self.task.name,
            "strategy": cfg.strategy,
            "world_size": info.world_size,
            "git_revision": git_revision() if info.is_main else None,
            "steps": self.state.step,
            "total_steps": self.total_steps,
            "start_step": start_step,
            "resumed_from": str(ckpt) if ckpt is not None else None,
            "epoch": self.loader.position.epoch,
            "stopped_early": stopped_early,
            "best_step": self.state.best_step,
            "wall_seconds": wall,
            "loop_seconds": loop_seconds,  # the training loop alone: no final evaluation, save or export
            "loop_cpu_seconds": loop_cpu_seconds,  # its CPU time (all threads): steadier on a busy machine
            "tokens": int(tok[0]),
            "tokens_per_second": float(tok[0]) / wall if wall > 0 else math.nan,
            "bytes_communicated": int(tok[1]),
            "final_train_loss": self.state.history[-1]["loss"] if self.state.history else None,
            "valid": final_eval,
            "test": test_metrics,
            **{f"test_{k}": v for k, v in test_breakdown.items()},
            "config": self.run_config,
        }
        if info.is_main:
            write_run_summary(self.out_dir, summary)
        return summary


def _snapshot(t: torch.Tensor) -> torch.Tensor:
    """A copy of a weight: on the host for plain tensors, in place for this rank's DTensor shard."""
    from torch.distributed.tensor import DTensor

    return t.detach().clone() if isinstance(t, DTensor) else t.detach().to("cpu", copy=True)


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
