"""``[train]``: how the engine trains, whatever the task."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kelm.config import Section

STRATEGIES = ("single", "ddp", "fsdp2", "diloco")


class TrainConfig(Section):
    """Loop, optimisation, parallelism, checkpoint and logging settings."""

    strategy: Literal["single", "ddp", "fsdp2", "diloco"] = "ddp"
    seed: int = 0
    # length: max_steps wins when both are set
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1, description="global batch size, summed over ranks")
    grad_accum: int = Field(1, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    # optimisation
    optimizer: Literal["adamw", "adam", "sgd", "adagrad"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    clip_grad_norm: float | None = Field(1.0, gt=0)
    amp: Literal["auto", "bf16", "off"] = "auto"
    # evaluation and early stopping
    eval_every: int | None = Field(None, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    restore_best: bool = Field(True, description="after early stopping, end with the weights of the best evaluation")
    # parallelism
    powersgd: bool = False
    powersgd_rank: int = Field(2, ge=1)
    activation_checkpointing: bool = False
    diloco_h: int = Field(50, ge=1, description="inner steps between DiLoCo synchronisations")
    diloco_compression: Literal["none", "bf16", "int8"] = "none"
    outer_lr: float = Field(0.7, gt=0)
    outer_momentum: float = Field(0.9, ge=0, lt=1)
    # checkpoints and logging
    checkpoint_every: int | None = Field(None, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    tensorboard: bool = True
    threads: int | None = Field(None, ge=1, description="torch intra-op threads per process")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.strategy == "diloco" and self.grad_accum != 1:
            raise ValueError("diloco does not combine with grad_accum > 1")
        return self
