"""What a task gives the training engine: a model, data, a loss and metrics.

The engine (`kelm.train.Trainer`) knows nothing else about a task, so adding a task never
touches the loop. Batches are built by `collate` from a list of samples; the engine moves
tensors to the device, shards samples across ranks and keeps the data position for resume.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from kelm.train.parallel import ParallelPlan

if TYPE_CHECKING:
    from kelm.train.config import TrainConfig

Batch = dict[str, Any]


class Task(ABC):
    """A learning problem the engine can train."""

    #: Registry name, e.g. ``causal-lm``.
    name: str = "task"
    #: The pydantic model of this task's ``[task]`` table (set by every registered task).
    config_class: ClassVar[type[Any]]
    #: True if `collate` takes ``rng``: a `kelm.train.data.BatchRandom` whose draws for a sample do not
    #: depend on the world size (negative sampling, masking), so one process and many draw the same.
    uses_batch_random: ClassVar[bool] = False
    #: ``min`` if a lower value of `monitor` is better (loss, perplexity), ``max`` otherwise.
    monitor: str = "loss"
    monitor_mode: str = "min"
    #: ``[train]`` values this task family trains well with (e.g. `FINETUNE_DEFAULTS`); the run
    #: applies them under the config file and the flags, which always win.
    train_defaults: ClassVar[dict[str, Any]] = {}

    def configure(self, train: TrainConfig) -> None:
        """Called by the engine before `build_model` with the run's training settings, for tasks
        whose model depends on them (e.g. an exact shortcut that holds for some optimizers only)."""
        return None

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model. Parameters must be created deterministically from the global seed."""

    def lr_scale(self, name: str) -> float:
        """Learning-rate multiplier of the parameter ``name`` (as the wrapped model names it, so
        match on a part of the name): e.g. fresh heads on a pretrained encoder. Default 1."""
        return 1.0

    def parallel_plan(self) -> ParallelPlan:
        """How the model shards itself and which repeated blocks FSDP2 and activation checkpointing
        treat one by one (`kelm.train.parallel`); the default plan does neither."""
        return ParallelPlan()

    @abstractmethod
    def train_data(self) -> Sequence[Any]:
        """Indexable training samples."""

    def eval_data(self) -> Sequence[Any] | None:
        """Indexable held-out samples, or None."""
        return None

    def test_data(self) -> Sequence[Any] | None:
        """Indexable test samples, evaluated once after training (``test`` in metrics.json), or None."""
        return None

    @abstractmethod
    def collate(self, samples: list[Any]) -> Batch:
        """Turn samples into a batch of tensors (with ``uses_batch_random``: ``collate(samples, rng)``)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss over the batch and any per-batch metrics to log."""

    def batch_weight(self, batch: Batch) -> int:
        """How many units (samples or tokens) the batch's mean loss averages over."""
        return len(next(iter(batch.values())))

    def tokens(self, batch: Batch) -> int:
        """Items per batch for throughput figures (tokens for LMs, triples for KGE)."""
        return self.batch_weight(batch)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        """Default evaluation: the weighted mean loss over the given batches."""
        total, weight = 0.0, 0
        for batch in batches:
            loss, _ = self.loss(model, batch)
            w = self.batch_weight(batch)
            total += float(loss) * w
            weight += w
        return {"loss": total / max(weight, 1)}

    def eval_details(self) -> Any:
        """Per-sample results of this rank's last `evaluate` call (e.g. ranks), or None."""
        return None

    def breakdown(self, details: list[Any]) -> dict[str, Any]:
        """A finer report from every rank's `eval_details` (e.g. metrics per relation); empty if none."""
        return {}

    def finalize_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Derive metrics that are not plain means (e.g. perplexity) after ranks are combined."""
        return metrics

    def resume_state(self) -> dict[str, Any]:
        """What a checkpoint records of the task's data (e.g. its vocabulary), for `check_resume`."""
        return {}

    def check_resume(self, state: dict[str, Any], ckpt: Path) -> None:
        """Raise `kelm.errors.ConfigError` if this task cannot continue ``ckpt``, whose task
        recorded ``state`` (`resume_state`; empty for checkpoints from before it existed)."""
        return None

    def save_artifacts(self, folder: Path) -> None:
        """Write what inference needs besides weights and config (vocabularies, label maps) into ``folder``."""
        return None

    def model_config(self) -> dict[str, Any]:
        """What is needed to rebuild the model for inference (saved beside the weights)."""
        return {"task": self.name}
