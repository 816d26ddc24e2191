"""Callbacks around the training loop (the HF ``TrainerCallback`` shape): the loop calls each hook
in order, and a callback acts through the trainer it is handed (its state, logger and ``control``).

The engine's own behaviour is three callbacks: `LogTrainLoss` (the periodic train-loss line),
`EarlyStopping` (the monitored metric, patience, the best weights) and `FaultInjection` (a test
hook that kills a rank at a chosen step). A caller adds its own through ``Trainer(callbacks=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from kelm.train.fault import maybe_fail
from kelm.train.logging import timer

#: A `kelm.train.trainer.Trainer` (named loosely: the trainer imports this module, not the reverse).
Trainer = Any


@dataclass
class TrainerControl:
    """What callbacks ask of the loop."""

    should_stop: bool = False


class TrainerCallback:
    """Hooks the loop calls; each does nothing unless overridden."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """After set-up and restore, before the first step of this run."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """After optimizer step ``step`` (counted from the start of the run, resumes included)."""

    def on_evaluate(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        """After an evaluation during training, with its metrics."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last step, before the final evaluation, checkpoint and export."""


class LogTrainLoss(TrainerCallback):
    """Every ``log_every`` steps (and at the last): the train loss of the window, summed over ranks,
    with the learning rate and throughput, to the run's logger and the checkpointed history."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        if step % trainer.cfg.log_every and step != trainer.total_steps:
            return
        window = trainer.window
        dist.all_reduce(window)
        train_loss = float(window[0] / window[1])
        window.zero_()
        lr = trainer.scheduler.get_last_lr()[0]
        trainer.logger.log(step, "train", {"loss": train_loss, "lr": lr})
        trainer.state.history.append({"step": step, "loss": train_loss})
        rate = trainer.tokens_this_run * trainer.info.world_size / max(timer() - trainer.wall0, 1e-9)
        trainer.logger.progress(step, {"loss": train_loss, "lr": lr, "tok/s": rate})


class EarlyStopping(TrainerCallback):
    """Stop once the task's monitored metric has not improved for ``early_stopping_patience``
    evaluations; with ``restore_best`` the final model is the one of the best evaluation."""

    def on_train_begin(self, trainer: Trainer) -> None:
        self.best_weights: dict[str, torch.Tensor] | None = None
        if self.exhausted(trainer):  # a resumed run whose patience had already run out
            trainer.control.should_stop = True

    @staticmethod
    def exhausted(trainer: Trainer) -> bool:
        patience = trainer.cfg.early_stopping_patience
        return patience is not None and trainer.state.bad_evals >= patience

    def on_evaluate(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        cfg, st, task = trainer.cfg, trainer.state, trainer.task
        value = metrics.get(task.monitor)
        if value is None or cfg.early_stopping_patience is None:
            return
        better = st.best is None or (value < st.best if task.monitor_mode == "min" else value > st.best)
        if better:
            st.best, st.best_step, st.bad_evals = value, st.step, 0
            if cfg.restore_best:
                self.best_weights = {k: _snapshot(v) for k, v in trainer.model.state_dict().items()}
            return
        st.bad_evals += 1
        if self.exhausted(trainer):
            trainer.control.should_stop = True
            trainer.final_eval = metrics

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.control.should_stop and self.best_weights is not None:
            trainer.model.load_state_dict(self.best_weights)  # the model of the best evaluation
            trainer.final_eval, trainer._saved_step = {}, None
        self.best_weights = None


class FaultInjection(TrainerCallback):
    """Kill this rank at the step ``KELM_FAULT_STEP`` names (`kelm.train.fault`): elastic-restart tests."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        maybe_fail("step", step, trainer.info.rank)


def default_callbacks() -> list[TrainerCallback]:
    """The engine's own behaviour, in the order it runs after each step."""
    return [FaultInjection(), LogTrainLoss(), EarlyStopping()]


def _snapshot(t: torch.Tensor) -> torch.Tensor:
    """A copy of a weight: on the host for plain tensors, in place for this rank's DTensor shard."""
    from torch.distributed.tensor import DTensor

    return t.detach().clone() if isinstance(t, DTensor) else t.detach().to("cpu", copy=True)


__all__ = [
    "EarlyStopping",
    "FaultInjection",
    "LogTrainLoss",
    "TrainerCallback",
    "TrainerControl",
    "default_callbacks",
]
