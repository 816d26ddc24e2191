"""kelm's Flower apps: the ClientApp trains and evaluates through kelm's engine, the ServerApp
runs `FederatedServer`. Built around one `FederatedJob`, for the simulation engine or for
processes that talk over gRPC."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from kelm.app.federate import fault
from kelm.app.federate.local import FederatedJob, evaluate_state, evaluation_weight, train_round
from kelm.app.federate.secure import is_secure, read_secure, secure_mod, secure_reply

JobSource = Callable[[Context], FederatedJob]


def client_index(context: Context) -> int:
    """The client's part of the data: ``partition-id`` of its node config."""
    return int(context.node_config["partition-id"])


def make_client_app(job_of: JobSource) -> ClientApp:
    app = ClientApp(mods=[secure_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        job = job_of(context)
        secure = is_secure(msg)
        if secure:
            state, config = read_secure(msg)
        else:
            state, config = msg.content["arrays"].to_torch_state_dict(), dict(msg.content["config"])
        index, server_round = client_index(context), int(config["server-round"])
        fault.before_training(index, server_round)
        update, examples, metrics = train_round(
            job, index, state, server_round, float(config["lr"]), float(config.get("proximal-mu", 0.0)), dense=secure
        )
        update = fault.after_training(index, server_round, update)
        if secure:
            fault.dump_update(index, server_round, update, examples)
            return secure_reply(msg, update, list(state), examples, metrics)
        record = MetricRecord({"num-examples": examples, **metrics})
        return Message(RecordDict({"arrays": ArrayRecord(update), "metrics": record}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        job = job_of(context)
        task, _, _ = job.client_part(client_index(context))
        metrics = evaluate_state(task, job.train, msg.content["arrays"].to_torch_state_dict(), "test")
        record = MetricRecord({"num-examples": evaluation_weight(task), **metrics})
        return Message(RecordDict({"metrics": record}), reply_to=msg)

    return app


def make_server_app(job_of: JobSource, outcome: dict | None = None, server: Any = None) -> ServerApp:
    """``outcome`` (when given) receives the run's summary or the error that ended it; ``server``
    is a `FederatedServer` built already (by default one is built from the run's job)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from kelm.app.federate.server import FederatedServer

        try:
            summary = (server or FederatedServer(job_of(context))).run(grid, context)
        except BaseException as err:
            if outcome is None:
                raise
            outcome["error"] = err
            return
        if outcome is not None:
            outcome["summary"] = summary

    return app
