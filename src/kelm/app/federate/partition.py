"""Splitting one task's data over federated clients, and restricting a task to its client's part.

Two families of tasks are split, each through a small view of what it trains on:

- link prediction (KGE and the tasks built on it): triples, split ``by="relation"`` (each relation
  wholly on one client, relations dealt out to balance triple counts), ``by="entity"`` (entities
  dealt out at random; a triple goes with its head) or ``by="random"``. The same rule splits the
  validation and test triples, so each client is evaluated on its own part; the entity and
  relation vocabularies stay global, so shared entities are aligned by id.
- samples (Hugging Face fine-tuning): ``by="iid"`` (a random equal split) or ``by="dirichlet"``
  (per label, client shares drawn from Dirichlet(alpha), the usual non-IID benchmark split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from kelm.errors import ConfigError
from kelm.train.task import Task

TRIPLE_SPLITS = ("relation", "entity", "random")
#: Tasks trained on triples that a client can restrict to its part (`use_training_triples`).
TRIPLE_TASKS = ("link-prediction", "text-kgc")
SAMPLE_SPLITS = ("iid", "dirichlet")
PartitionBy = Literal["relation", "entity", "random", "iid", "dirichlet"]


@dataclass(frozen=True)
class Partition:
    """Which part of a task's data one client holds."""

    index: int
    clients: int
    by: str
    seed: int = 0
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.clients:
            raise ConfigError(f"client {self.index} is not one of {self.clients} clients (0..{self.clients - 1})")


# -- splitting rules (pure functions of the data and the seed) ------------------------------------
def balanced_groups(counts: np.ndarray, parts: int, seed: int) -> np.ndarray:
    """Each key's group: largest first, each to the group with the fewest items so far (ties by a
    seeded order), so groups are near equal in items even when keys are not."""
    rng = np.random.default_rng(seed)
    order = sorted(range(len(counts)), key=lambda k: (-int(counts[k]), rng.random()))
    load, group = np.zeros(parts, dtype=np.int64), np.zeros(len(counts), dtype=np.int64)
    for k in order:
        g = int(np.argmin(load))
        group[k], load[g] = g, load[g] + counts[k]
    return group


def triple_owners(
    splits: dict[str, torch.Tensor], num_entities: int, num_relations: int, p: Partition
) -> dict[str, np.ndarray]:
    """The client of every triple of every split (``splits``: name → (n, 3) tensor)."""
    train = splits["train"]
    if p.by == "relation":
        counts = np.bincount(train[:, 1].numpy(), minlength=num_relations)
        group = balanced_groups(counts, p.clients, p.seed)
        return {name: group[t[:, 1].numpy()] for name, t in splits.items()}
    if p.by == "entity":
        group = np.random.default_rng(p.seed).integers(0, p.clients, num_entities)
        return {name: group[t[:, 0].numpy()] for name, t in splits.items()}
    if p.by == "random":
        out = {}
        for k, (name, t) in enumerate(sorted(splits.items())):
            out[name] = np.random.default_rng([p.seed, k]).integers(0, p.clients, len(t))
        return out
    raise ConfigError(f"federate.partition: '{p.by}' does not split triples (use one of {', '.join(TRIPLE_SPLITS)})")


def sample_owners(n: int, labels: np.ndarray | None, p: Partition) -> np.ndarray:
    """The client of each of ``n`` training samples."""
    rng = np.random.default_rng(p.seed)
    if p.by == "iid":
        return rng.permutation(n) % p.clients
    if p.by != "dirichlet":
        raise ConfigError(
            f"federate.partition: '{p.by}' does not split samples (use one of {', '.join(SAMPLE_SPLITS)})"
        )
    if labels is None:
        raise ConfigError("federate.partition 'dirichlet' needs a task with one label per sample")
    owners = np.empty(n, dtype=np.int64)
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(p.clients, p.alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
        for client, part in enumerate(np.split(idx, cuts)):
            owners[part] = client
    return owners


# -- views: what a client's task trains and is evaluated on ---------------------------------------
class TripleView:
    """A link-prediction task restricted to one client's triples (vocabularies kept global)."""

    def __init__(self, task: Any):
        self.task = task

    def restrict(self, p: Partition) -> int:
        t = self.task
        splits = {"train": t.train_triples}
        for name, attr in (("valid", "valid_triples"), ("test", "test_triples")):
            if getattr(t, attr) is not None:
                splits[name] = getattr(t, attr)
        owners = triple_owners(splits, t.tensors.num_entities, t.tensors.num_relations, p)
        mine = {name: splits[name][torch.from_numpy(owners[name] == p.index)] for name in splits}
        if len(mine["train"]) == 0:
            raise ConfigError(
                f"client {p.index} of {p.clients} holds no training triples (federate.partition '{p.by}')"
            )
        t.use_training_triples(mine["train"])
        t.valid_triples = mine.get("valid") if "valid" in mine and len(mine["valid"]) else None
        t.test_triples = mine.get("test") if "test" in mine and len(mine["test"]) else None
        return len(mine["train"])

    def row_counts(self) -> dict[str, torch.Tensor]:
        """FedE's weights: per entity (and relation) row of a KGE model, how often this client's
        triples use it; rows a client never trains on get weight 0 and are left to the clients
        that hold them. (A text-KGC encoder has no such tables: FedAvg.)"""
        t = self.task
        if t.name != "link-prediction":
            return {}
        tr = t.train_triples
        E, R = t.tensors.num_entities, t.tensors.num_relations
        ent = torch.bincount(torch.cat([tr[:, 0], tr[:, 2]]), minlength=E).double()
        rel = torch.bincount(tr[:, 1], minlength=R).double()
        if t.cfg.reciprocal:
            rel = torch.cat([rel, rel])
        return {"kge.entity.weight": ent, "kge.relation.weight": rel}


class SampleView:
    """A task whose training set is a list of samples (``task.splits["train"]``)."""

    def __init__(self, task: Any):
        self.task = task

    def labels(self) -> np.ndarray | None:
        items = self.task.splits["train"]
        return np.array([s["label"] for s in items]) if items and "label" in items[0] else None

    def restrict(self, p: Partition) -> int:
        items = self.task.splits["train"]
        owners = sample_owners(len(items), self.labels() if p.by == "dirichlet" else None, p)
        mine = [s for s, o in zip(items, owners, strict=True) if o == p.index]
        if not mine:
            raise ConfigError(
                f"client {p.index} of {p.clients} holds no training samples (federate.partition '{p.by}')"
            )
        self.task.splits["train"] = mine
        return len(mine)

    def row_counts(self) -> dict[str, torch.Tensor]:
        return {}


def view_of(task: Task) -> TripleView | SampleView:
    """The view that splits ``task``'s data, or a config error for a task that cannot be split yet."""
    if task.name in TRIPLE_TASKS:
        return TripleView(task)
    splits = getattr(task, "splits", None)
    if isinstance(splits, dict) and isinstance(splits.get("train"), list):
        return SampleView(task)
    raise ConfigError(f"task '{task.name}' cannot be split over federated clients")


def default_split(task: Task) -> str:
    return "relation" if isinstance(view_of(task), TripleView) else "iid"


def check_partition(task: Task, by: str) -> None:
    """A config error now, before any client starts, for a split the task's data cannot take."""
    view = view_of(task)
    if by == "auto":
        return
    if isinstance(view, TripleView) and by not in TRIPLE_SPLITS:
        raise ConfigError(f"federate.partition: '{by}' does not split triples (use one of {', '.join(TRIPLE_SPLITS)})")
    if isinstance(view, SampleView):
        if by not in SAMPLE_SPLITS:
            raise ConfigError(
                f"federate.partition: '{by}' does not split samples (use one of {', '.join(SAMPLE_SPLITS)})"
            )
        if by == "dirichlet" and view.labels() is None:
            raise ConfigError("federate.partition 'dirichlet' needs a task with one label per sample")
