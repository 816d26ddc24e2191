"""``[federate]``: how a federated run splits the data, trains on the clients and aggregates."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from kelm.config import Section


class FederateConfig(Section):
    """Clients, rounds, local training, aggregation and fault handling of a federated run."""

    clients: int = Field(3, ge=1, description="number of clients (data owners)")
    rounds: int = Field(10, ge=1)
    local_epochs: int = Field(1, ge=1, description="epochs over its own data each client trains per round")
    local_steps: int | None = Field(None, ge=1, description="optimizer steps per round instead of local_epochs")
    algorithm: Literal["fedavg", "fedprox"] = "fedavg"
    proximal_mu: float = Field(0.01, ge=0, description="FedProx: weight of (mu/2)·||w - w_global||² on the clients")
    keep_optimizer_state: bool = Field(
        True,
        description="each client keeps its optimizer's state (Adam moments, Adagrad sums) from one round "
        "to its next, in its own folder, instead of starting it afresh every round",
    )
    shared_rows: bool = Field(
        True,
        description="FedE: embedding tables (entities, relations) are averaged per row over the clients "
        "whose data uses the row, weighted by how often; other parameters by examples (FedAvg)",
    )
    secure_aggregation: bool = Field(
        False, description="SecAgg+: the server sees only the sum of the clients' masked updates (FedAvg)"
    )
    secagg_shares: int | float = Field(
        1.0, gt=0, description="SecAgg+: key shares per client (a float: of the clients)"
    )
    secagg_threshold: int | float = Field(
        0.5, gt=0, description="SecAgg+: shares that rebuild a key (a float: of the shares)"
    )
    secagg_max_weight: float = Field(1e5, gt=0, description="SecAgg+: the largest number of examples of one client")
    secagg_clipping_range: float = Field(8.0, gt=0, description="SecAgg+: parameters are clipped to ± this")
    secagg_quantization_range: int = Field(2**22, ge=2, description="SecAgg+: levels parameters are quantized to")
    dp_epsilon: float | None = Field(
        None, gt=0, description="differential privacy: each client's ε at dp_delta over the whole run (sets the noise)"
    )
    dp_noise_multiplier: float | None = Field(
        None, gt=0, description="DP-SGD noise over clipping norm (instead of dp_epsilon)"
    )
    dp_delta: float = Field(1e-5, gt=0, lt=1)
    dp_max_grad_norm: float = Field(1.0, gt=0, description="DP-SGD: each sample's gradient is clipped to this norm")
    trainable: list[str] = Field(
        default_factory=list,
        description="clients train only the parameters whose names contain one of these (empty: all); "
        "with DP, the noise grows with the number of parameters trained",
    )
    partition: Literal["auto", "relation", "entity", "random", "iid", "dirichlet"] = Field(
        "auto", description="how the data is split: auto is 'relation' for triples, 'iid' for samples"
    )
    dirichlet_alpha: float = Field(0.5, gt=0)
    partition_seed: int = 0
    min_clients: int | None = Field(
        None, ge=1, description="updates a round needs to be aggregated (default: a majority of the clients)"
    )
    round_timeout: float = Field(600.0, gt=0, description="seconds the server waits for a round's replies")
    retries: int = Field(2, ge=0, description="times a round with too few good updates is run again")
    connect_timeout: float = Field(120.0, gt=0, description="seconds the server waits for min_clients clients")
    eval_every: int = Field(1, ge=1, description="rounds between evaluations of the global model on the server")
    client_threads: int = Field(1, ge=1, description="torch threads of each simulated client")
    parallel_clients: int | None = Field(
        None, ge=1, description="simulated clients training at once (default: the cores over client_threads)"
    )

    @model_validator(mode="after")
    def _check(self) -> FederateConfig:
        if self.dp_epsilon is not None and self.dp_noise_multiplier is not None:
            raise ValueError("set dp_epsilon or dp_noise_multiplier, not both")
        if self.private and self.secure_aggregation:
            raise ValueError("differential privacy and secure aggregation are not combined yet")
        if self.min_clients is not None and self.min_clients > self.clients:
            raise ValueError(f"min_clients ({self.min_clients}) exceeds clients ({self.clients})")
        return self

    @property
    def private(self) -> bool:
        """Clients train with DP-SGD."""
        return self.dp_epsilon is not None or self.dp_noise_multiplier is not None

    @property
    def quorum(self) -> int:
        """Good updates a round needs."""
        return self.min_clients if self.min_clients is not None else self.clients // 2 + 1


def round_lr(lr: float, schedule: str, server_round: int, rounds: int, min_ratio: float = 0.0) -> float:
    """The clients' learning rate in ``server_round`` (1-based): ``[train] schedule`` applied over
    rounds, constant within each round."""
    frac = (server_round - 1) / rounds
    if schedule == "linear":
        factor = 1.0 - frac
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * frac))
    else:
        factor = 1.0
    return lr * (min_ratio + (1.0 - min_ratio) * factor)
