"""Secure aggregation with Flower's SecAgg+ workflow: the server learns only the weighted average
of the clients' updates, never one client's; a client that drops after it shared its key is
recovered from its neighbours' shares.

SecAgg+ sums whole vectors, so a secure round averages every floating-point tensor by examples
(FedAvg; FedE's per-row weights are off), and the server can check the aggregate only, not each
client's update. Parameters are clipped to ``±clipping_range`` and quantized before masking:
the error of an averaged value is about ``2 · clipping_range / quantization_range`` times the
total weight over a client's weight.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from kelm.app.federate.config import FederateConfig
from kelm.app.federate.updates import State

#: The key of the ordered parameter names in a secure round's config.
NAMES = "kelm-names"


def secured_names(weights: State) -> list[str]:
    """The tensors a secure round averages: the floating-point ones (integer buffers stay)."""
    return [k for k, v in weights.items() if v.is_floating_point()]


class OneRound(Strategy):
    """The legacy strategy SecAgg+ drives for one kelm round: it offers the sampled clients the
    global weights and keeps the unmasked average."""

    def __init__(self, grid: Grid, nodes: list[int], config: dict[str, Any]):
        self.grid, self.nodes, self.config = grid, nodes, config
        self.average: Parameters | None = None
        self.results: list[tuple[ClientProxy, FitRes]] = []
        self.failures: list[Any] = []

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: Any
    ) -> list[tuple[ClientProxy, FitIns]]:
        run_id = self.grid.run.run_id
        return [(GridClientProxy(n, self.grid, run_id), FitIns(parameters, dict(self.config))) for n in self.nodes]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Parameters | None, dict]:
        self.results, self.failures = list(results), list(failures)
        self.average = results[0][1].parameters if results else None
        return self.average, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list:
        return []

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


def secure_round(
    grid: Grid, context: Context, nodes: list[int], weights: State, config: dict[str, Any], fed: FederateConfig
) -> tuple[State | None, list[dict[str, float]]]:
    """One SecAgg+ round: the new global weights (None if too few clients finished) and the
    metrics the surviving clients reported."""
    names = secured_names(weights)
    strategy = OneRound(grid, nodes, {**config, NAMES: "\n".join(names)})  # legacy configs hold scalars
    legacy = LegacyContext(context, ServerConfig(num_rounds=1), strategy)
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: int(config["server-round"])})
    arrays = [weights[k].detach().cpu().numpy() for k in names]
    legacy.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord(arrays)
    workflow = SecAggPlusWorkflow(
        num_shares=fed.secagg_shares,
        reconstruction_threshold=fed.secagg_threshold,
        max_weight=fed.secagg_max_weight,
        clipping_range=fed.secagg_clipping_range,
        quantization_range=fed.secagg_quantization_range,
        timeout=fed.round_timeout,
    )
    workflow(grid, legacy)
    if strategy.average is None:
        return None, []
    merged = dict(weights)
    for name, value in zip(names, parameters_to_ndarrays(strategy.average), strict=True):
        merged[name] = torch.from_numpy(np.asarray(value)).to(weights[name].dtype).reshape(weights[name].shape)
    metrics = [
        {"num-examples": float(r.num_examples), **{k: float(v) for k, v in r.metrics.items()}}
        for _, r in strategy.results
    ]
    return merged, metrics


# -- the client's side ------------------------------------------------------------------------------
def secure_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower's SecAgg+ client mod for the messages of a secure round; others go straight on
    (the mod alone would take every training message for a SecAgg+ stage)."""
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_secure(msg: Message) -> bool:
    """A message SecAgg+'s client mod hands on to be trained: the legacy fit format."""
    return "fitins.parameters" in msg.content.array_records


def read_secure(msg: Message) -> tuple[State, dict[str, Any]]:
    """The global weights and the round's config of a secure training message."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    names = str(fitins.config[NAMES]).split("\n")
    arrays = parameters_to_ndarrays(fitins.parameters)
    state = {name: torch.from_numpy(np.array(a)) for name, a in zip(names, arrays, strict=True)}
    return state, {k: v for k, v in fitins.config.items() if k != NAMES}


def secure_reply(msg: Message, update: State, names: list[str], examples: int, metrics: dict[str, float]) -> Message:
    params = ndarrays_to_parameters([update[k].detach().cpu().numpy() for k in names])
    fitres = FitRes(Status(Code.OK, "ok"), params, int(examples), {k: float(v) for k, v in metrics.items()})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)
