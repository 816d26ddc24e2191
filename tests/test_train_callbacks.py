"""Callbacks around the one loop: a caller's hooks see every step and evaluation and can stop the run."""

from __future__ import annotations

from pathlib import Path

from kelm.tasks.causal_lm import CausalLMConfig, CausalLMTask
from kelm.train.callbacks import EarlyStopping, FaultInjection, LogTrainLoss, TrainerCallback
from kelm.train.config import TrainConfig
from kelm.train.distributed import shutdown
from kelm.train.trainer import Trainer

CORPUS = b"".join(f"fact {i}: the {i % 7} relates to the {i % 5}.\n".encode() for i in range(400))


class Recorder(TrainerCallback):
    """Records the hooks it sees and stops the run after ``stop_at`` steps."""

    def __init__(self, stop_at: int):
        self.stop_at, self.events = stop_at, []

    def on_train_begin(self, trainer: Trainer) -> None:
        self.events.append(("begin", trainer.state.step))

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        self.events.append(("step", step))
        if step == self.stop_at:
            trainer.control.should_stop = True

    def on_evaluate(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        self.events.append(("eval", step, "loss" in metrics))

    def on_train_end(self, trainer: Trainer) -> None:
        self.events.append(("end", trainer.state.step))


def test_callbacks_see_steps_and_evaluations_and_can_stop(tmp_path: Path) -> None:
    task = CausalLMTask(CausalLMConfig(seq_len=16, d_model=16, n_layer=1, n_head=2), corpus=CORPUS)
    cfg = TrainConfig(tensorboard=False, threads=1, batch_size=4, max_steps=10, eval_every=2, log_every=1, lr=1e-3)
    recorder = Recorder(stop_at=5)
    trainer = Trainer(task, cfg, tmp_path / "run", callbacks=[recorder])
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
        shutdown()
    assert [type(c) for c in trainer.callbacks[:3]] == [FaultInjection, LogTrainLoss, EarlyStopping]
    assert recorder.events == [
        ("begin", 0),
        ("step", 1),
        ("step", 2),
        ("eval", 2, True),
        ("step", 3),
        ("step", 4),
        ("eval", 4, True),
        ("step", 5),
        ("end", 5),
    ]
    assert summary["steps"] == 5 and summary["stopped_early"] is True
    assert [h["step"] for h in trainer.state.history] == [1, 2, 3, 4, 5]  # LogTrainLoss at log_every 1
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
