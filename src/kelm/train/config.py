"""``[train]``: how the engine trains, whatever the task."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from kelm.config import Section

STRATEGIES = ("single", "ddp", "fsdp2", "diloco")

# Per-task-family defaults: a task declares one as ``train_defaults``; the run applies it under
# the config file and the flags (they always win). Keys the family leaves out keep the engine's
# defaults below (AdamW, lr 1e-3, cosine, clip 1.0), which suit kelm's own small models.
#: Fine-tuning a pretrained Hugging Face encoder (classification, NER, QA, text-kgc): the HF
#: Trainer's recipe: lr 5e-5, linear decay after a warmup of 6% of the steps, no weight decay,
#: gradients clipped at norm 1.
FINETUNE_DEFAULTS: dict[str, Any] = {"lr": 5e-5, "schedule": "linear", "warmup_ratio": 0.06, "weight_decay": 0.0}
#: Pretraining a Hugging Face model (mlm, clm; tiny-bert / tiny-gpt2 from scratch by default):
#: lr 5e-4 with cosine decay after a 5% warmup, as the HF course trains a small LM from scratch.
PRETRAIN_DEFAULTS: dict[str, Any] = {"lr": 5e-4, "schedule": "cosine", "warmup_ratio": 0.05, "weight_decay": 0.0}
#: Knowledge-graph embeddings (link-prediction): PyKEEN's Adam at lr 1e-3, and like LibKGE and
#: PyKEEN no learning-rate schedule and no gradient clipping.
KGE_DEFAULTS: dict[str, Any] = {"optimizer": "adam", "lr": 1e-3, "schedule": "constant", "clip_grad_norm": None}


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
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps; when 0, warmup_ratio of the run's steps")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="warmup as a fraction of the steps, if warmup_steps is 0")
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
    log_every: int = Field(10, ge=1, description="steps between logged train loss (and plain log lines off a terminal)")
    tensorboard: bool = True
    threads: int | None = Field(None, ge=1, description="torch intra-op threads per process")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.strategy == "diloco" and self.grad_accum != 1:
            raise ValueError("diloco does not combine with grad_accum > 1")
        return self
