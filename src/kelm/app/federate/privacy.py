"""Differential privacy on a client with Opacus: per-sample gradients, each clipped to
``dp_max_grad_norm``, Gaussian noise, Poisson-sampled batches, and an RDP accountant that says
what ε the client has spent at ``dp_delta`` over all its rounds.

What works: Hugging Face encoders (Opacus' samplers for ``nn.Linear``, ``nn.Embedding`` and
``nn.LayerNorm`` give exact per-sample gradients), with the position embeddings frozen (their
lookup broadcasts one row of positions over the batch, so Opacus cannot split its gradient by
sample). What does not: kelm's KGE scorers (the entity table is looked up and also multiplied
against every query to score all entities; Opacus sees only the lookup, so the per-sample
gradient would be wrong), refused with a config error.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kelm.app.federate.config import FederateConfig
from kelm.atomic import write_text_atomic
from kelm.errors import ConfigError
from kelm.train.trainer import Trainer

PRIVACY_FILE = "privacy.json"
#: Parameters Opacus cannot give per-sample gradients for in an HF encoder: kept frozen under DP.
FROZEN_UNDER_DP = ("position_embeddings",)


@dataclass
class PrivacyPlan:
    """One client's DP-SGD settings for the whole run."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    delta: float

    def epsilon(self, steps: int) -> float:
        from opacus.accountants import RDPAccountant

        accountant = RDPAccountant()
        accountant.history = [(self.noise_multiplier, self.sample_rate, steps)] if steps else []
        return float(accountant.get_epsilon(self.delta)) if steps else 0.0


def plan_privacy(fed: FederateConfig, samples: int, batch_size: int, steps_per_round: int) -> PrivacyPlan:
    """The noise a client needs: ``dp_noise_multiplier``, or the smallest that keeps its ε at
    ``dp_delta`` within ``dp_epsilon`` after every round of the run."""
    q = min(1.0, batch_size / samples)
    sigma = fed.dp_noise_multiplier
    if sigma is None:
        from opacus.accountants.utils import get_noise_multiplier

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sigma = get_noise_multiplier(
                target_epsilon=fed.dp_epsilon,
                target_delta=fed.dp_delta,
                sample_rate=q,
                steps=steps_per_round * fed.rounds,
                accountant="rdp",
            )
    return PrivacyPlan(float(sigma), fed.dp_max_grad_norm, q, fed.dp_delta)


def check_private_task(task: Any) -> None:
    """A config error for a task whose model Opacus cannot give exact per-sample gradients."""
    if hasattr(task, "train_triples"):
        raise ConfigError(
            "federate.dp_*: KGE models cannot be trained with differential privacy: their entity table "
            "is both looked up and multiplied against every query, and Opacus sees only the lookup"
        )


def freeze(model: nn.Module, trainable: list[str], private: bool = False) -> list[str]:
    """With ``trainable``, freeze every parameter whose name has none of those parts; under DP
    also what Opacus cannot train. Returns the names left trainable."""
    kept = []
    for name, p in model.named_parameters():
        frozen = (private and any(part in name for part in FROZEN_UNDER_DP)) or (
            trainable and not any(t in name for t in trainable)
        )
        if frozen:
            p.requires_grad_(False)
        elif p.requires_grad:
            kept.append(name)
    if not kept:
        raise ConfigError(f"federate.trainable {trainable} leaves no parameter to train")
    return kept


def poisson_batches(data: Any, collate: Any, rate: float, seed: int) -> Iterator[dict[str, Any]]:
    """Batches in which every sample is drawn independently with probability ``rate`` (the
    sampling the accountant assumes); an empty draw is drawn again."""
    g = torch.Generator().manual_seed(seed)
    n = len(data)
    while True:
        picked = torch.nonzero(torch.rand(n, generator=g) < rate).flatten().tolist()
        if picked:
            yield collate([data[i] for i in picked])


def make_private(trainer: Trainer, plan: PrivacyPlan, seed: int) -> None:
    """Turn the set-up ``trainer`` into a DP-SGD one: Opacus' per-sample gradients and noisy
    optimizer, Poisson-sampled batches (its model's parameters frozen as `freeze` says first)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    trainer.model = GradSampleModule(trainer.model, loss_reduction="mean")
    batch = trainer.cfg.batch_size
    trainer.optimizer = DPOptimizer(
        trainer.optimizer,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        expected_batch_size=batch,
        loss_reduction="mean",
        generator=torch.Generator().manual_seed(seed),
    )
    trainer._stream = poisson_batches(trainer.task.train_data(), trainer.task.collate, plan.sample_rate, seed)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside Opacus' wrapper (its state dict without the wrapper's prefix)."""
    return getattr(model, "_module", model)


def spent_steps(folder: Path) -> int:
    path = folder / PRIVACY_FILE
    return int(json.loads(path.read_text())["steps"]) if path.is_file() else 0


def record_steps(folder: Path, steps: int, plan: PrivacyPlan) -> float:
    """Add a round's steps to the client's ledger; returns its ε so far."""
    total = spent_steps(folder) + steps
    eps = plan.epsilon(total)
    record = {"steps": total, "epsilon": eps, "delta": plan.delta, **plan.__dict__}
    write_text_atomic(folder / PRIVACY_FILE, json.dumps(record, indent=2))
    return eps
