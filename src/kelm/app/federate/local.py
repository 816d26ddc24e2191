"""What runs on a client: its part of the task, one round of local training through the engine,
and evaluating a model's weights on a task's own data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kelm.app.federate.config import FederateConfig
from kelm.app.federate.partition import Partition, SampleView, TripleView, default_split, view_of
from kelm.app.federate.privacy import check_private_task, freeze, make_private, plan_privacy, record_steps, unwrap
from kelm.app.federate.updates import State, encode_update
from kelm.app.run import RunConfig
from kelm.atomic import atomic_path
from kelm.train.config import TrainConfig
from kelm.train.data import eval_batches
from kelm.train.task import Task
from kelm.train.trainer import Trainer


@dataclass
class FederatedJob:
    """One federated run, as every process of it sees it: the task's run config, ``[federate]``
    and the output folder. Picklable, so simulated clients receive it whole."""

    run: RunConfig
    fed: FederateConfig
    out_dir: Path
    #: Where clients keep their work (a deployed client: its own folder; default ``out_dir/clients``).
    client_root: Path | None = None

    def client_dir(self, index: int) -> Path:
        return (self.client_root or self.out_dir / "clients") / str(index)

    @property
    def train(self) -> TrainConfig:
        return self.run.config.train

    def partition(self, index: int, task: Task | None = None) -> Partition:
        by = self.fed.partition
        if by == "auto":
            by = default_split(task if task is not None else self.run.build_task())
        return Partition(index, self.fed.clients, by, self.fed.partition_seed, self.fed.dirichlet_alpha)

    def client_part(self, index: int) -> tuple[Task, TripleView | SampleView, int]:
        """Client ``index``'s task restricted to its data, its view and its training size (built
        once per process: a simulated client that runs again in the same worker reuses it)."""
        key = (self.key, index)
        if key not in _PARTS:
            task = federated_task(self.run)
            view = view_of(task)
            size = view.restrict(self.partition(index, task))
            _PARTS[key] = (task, view, size)
        return _PARTS[key]

    @property
    def key(self) -> str:
        """Names the job in a process's cache of client parts."""
        spec = {"run": self.run.as_dict(), "fed": self.fed.model_dump(), "out": str(self.out_dir)}
        return json.dumps(spec, sort_keys=True, default=str)


#: A client's optimizer state between rounds, in its folder.
OPTIMIZER_FILE = "optimizer.pt"
#: Client parts built in this process, by job and client.
_PARTS: dict[tuple[str, int], tuple[Task, TripleView | SampleView, int]] = {}


def federated_task(run: RunConfig) -> Task:
    """``run``'s task with the options off that would make a model depend on its client's data
    (a vocabulary compacted to the tokens the data uses): every client's weights align."""
    task = run.build_task()
    cfg = getattr(task, "cfg", None)
    off = ["compact_vocab"]
    if run.config.federate.private:  # speed-ups that rewrite forward or backward passes Opacus hooks
        off += ["sparse_embedding_grads", "short_row_attention"]
    for name in off:
        if getattr(cfg, name, False):
            setattr(cfg, name, False)
    return task


def client_train_config(job: FederatedJob, server_round: int, index: int, lr: float, samples: int) -> TrainConfig:
    """The engine's settings for one local round: one process, the round's learning rate held
    constant, no evaluation or checkpoints, a shuffle seed of its own per round and client."""
    train, fed = job.train, job.fed
    return train.model_copy(
        update={
            "strategy": "single",
            "seed": train.seed + 1009 * server_round + 7 * index,
            "epochs": fed.local_epochs,
            "max_steps": fed.local_steps,
            "batch_size": min(train.batch_size, samples),
            "lr": lr,
            "schedule": "constant",
            "warmup_steps": 0,
            "warmup_ratio": 0.0,
            "eval_every": None,
            "early_stopping_patience": None,
            "checkpoint_every": None,
            "tensorboard": False,
            "threads": fed.client_threads,
            # DP-SGD clips each sample's gradient itself
            "clip_grad_norm": None if fed.private else train.clip_grad_norm,
        }
    )


def proximal_hook(model: nn.Module, mu: float) -> Any:
    """FedProx: before each optimizer step, add the gradient of (mu/2)·||w - w_start||²."""
    anchor = {id(p): p.detach().clone() for p in model.parameters() if p.requires_grad}

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None and id(p) in anchor:
                    p.grad.add_(p.detach() - anchor[id(p)], alpha=mu)

    return hook


def restore_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """The client's optimizer state from its last round, at this round's learning rates."""
    lrs = [g["lr"] for g in optimizer.param_groups]
    optimizer.load_state_dict(torch.load(path, weights_only=True))
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr


def train_round(
    job: FederatedJob, index: int, state: State, server_round: int, lr: float, mu: float = 0.0, dense: bool = False
) -> tuple[State, int, dict[str, float]]:
    """Client ``index`` trains the global ``state`` on its own data for one round; returns its
    update (`encode_update`; ``dense``: every tensor whole, as secure aggregation sums them), its
    number of training examples and the round's metrics. A ``state`` without the model's integer
    buffers (a secure round sends floating-point tensors only) keeps the model's own."""
    task, view, size = job.client_part(index)
    samples = len(task.train_data())
    cfg = client_train_config(job, server_round, index, lr, samples)
    trainer = Trainer(task, cfg, job.client_dir(index), run_config={"train": cfg.model_dump()})
    kept = job.client_dir(index) / OPTIMIZER_FILE if job.fed.keep_optimizer_state else None
    plan = None
    if job.fed.private:
        check_private_task(task)
        per_round = job.fed.local_steps or job.fed.local_epochs * (samples // cfg.batch_size)
        plan = plan_privacy(job.fed, samples, cfg.batch_size, per_round)

    def prepare(t: Trainer) -> None:
        missing, unexpected = t.model.load_state_dict(state, strict=False)
        if unexpected or any(t.model.state_dict()[k].is_floating_point() for k in missing):
            raise ValueError(f"the global weights do not fit this client's model: {(missing + unexpected)[:3]}")
        if kept is not None and kept.is_file():
            restore_optimizer(t.optimizer, kept)
        inner = t.optimizer
        if job.fed.trainable or plan is not None:
            freeze(t.model, job.fed.trainable, private=plan is not None)
        if plan is not None:
            make_private(t, plan, cfg.seed)
        if mu > 0:  # on the inner optimizer: after DP's noise, a data-free term costs no privacy
            inner.register_step_pre_hook(proximal_hook(unwrap(t.model), mu))

    try:
        stats = trainer.train_only(prepare)
        rows = view.row_counts() if job.fed.shared_rows and not dense else {}
        update = encode_update(unwrap(trainer.model).state_dict(), rows)
        if kept is not None:
            inner = getattr(trainer.optimizer, "original_optimizer", trainer.optimizer)
            with atomic_path(kept) as tmp:
                torch.save(inner.state_dict(), tmp)
    finally:
        trainer.close()
    metrics = {"train_loss": stats["loss"], "steps": stats["steps"]}
    if plan is not None:
        metrics["epsilon"] = record_steps(job.client_dir(index), int(stats["steps"]), plan)
    return update, size, metrics


def evaluate_state(task: Task, train: TrainConfig, state: State, split: str = "valid") -> dict[str, float]:
    """``task``'s metrics of a model holding ``state`` on its ``valid`` or ``test`` data, in this
    process alone ({} when the task has no such data)."""
    data = task.eval_data() if split == "valid" else task.test_data()
    if data is None or len(data) == 0:
        return {}
    task.configure(train)
    model = task.build_model()
    model.load_state_dict(state)
    model.eval()
    batches = eval_batches(data, task.collate, train.eval_batch_size or train.batch_size, 0, 1)
    with torch.no_grad():
        metrics = task.evaluate(model, batches)
    return task.finalize_metrics(metrics)


def evaluation_weight(task: Task, split: str = "test") -> float:
    """How much a client's metrics weigh when averaged: its number of evaluated examples."""
    data = task.test_data() if split == "test" else task.eval_data()
    return float(len(data)) if data is not None else 0.0
