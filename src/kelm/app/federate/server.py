"""The server's side of a federated run: rounds over Flower's Grid, with a quorum, a timeout and
retries, updates checked before they are averaged, the global model evaluated, and a checkpoint
after every round that a restarted server resumes from."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from kelm.app.federate.config import round_lr
from kelm.app.federate.local import FederatedJob, evaluate_state, federated_task
from kelm.app.federate.partition import check_partition, view_of
from kelm.app.federate.updates import BadUpdate, State, Update, aggregate, check_update, weighted_mean
from kelm.artifacts import CONFIG, WEIGHTS, write_toml
from kelm.atomic import atomic_path
from kelm.errors import KelmError
from kelm.progress import console
from kelm.train.export import distinct_tensors
from kelm.train.logging import write_run_summary
from kelm.train.trainer import seed_everything

log = logging.getLogger("kelm.federate")
STATE_FILE = "federate_state.pt"
EVENTS_FILE = "federate_events.jsonl"


def round_line(record: dict[str, Any], rounds: int, monitor: str) -> str:
    """``round 3/10: 3/3 updates, train loss 1.234, valid mrr 0.456 (2.1 s)``."""
    valid = record.get("valid") or {}
    score = f", valid {monitor} {valid[monitor]:.4f}" if monitor in valid else ""
    return (
        f"round {record['round']}/{rounds}: {record['updates']}/{record['clients']} updates, "
        f"train loss {record['train_loss']:.4f}{score} ({record['seconds']:.1f} s)"
    )


class FederationError(KelmError):
    """A federated run that cannot go on (too few clients, every retry of a round failed)."""


@dataclass
class ServerState:
    """What a checkpoint holds: the last finished round, the global weights and the history."""

    round: int
    weights: State
    history: list[dict[str, Any]] = field(default_factory=list)


def save_state(path: Path, state: ServerState) -> None:
    with atomic_path(path) as tmp:
        torch.save({"round": state.round, "weights": state.weights, "history": state.history}, tmp)


def load_state(path: Path) -> ServerState:
    data = torch.load(path, weights_only=True)
    return ServerState(int(data["round"]), data["weights"], list(data["history"]))


class FederatedServer:
    """Runs ``job``'s rounds on a Flower ``Grid`` (simulated or over gRPC)."""

    def __init__(self, job: FederatedJob):
        self.job, self.fed = job, job.fed
        self.out = Path(job.out_dir)
        self.task = federated_task(job.run)
        check_partition(self.task, self.fed.partition)
        train = job.train
        self.task.configure(train)
        seed_everything(train.seed)
        model = self.task.build_model()
        self.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.model_spec = {k: v for k, v in self.task.model_config().items() if k != "task"}
        # SecAgg+ sums whole tensors: a secure run averages by examples only
        rows = view_of(self.task).row_counts() if self.fed.shared_rows and not self.fed.secure_aggregation else {}
        self.row_params = frozenset(rows)

    # -- bookkeeping ----------------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        """One line of ``federate_events.jsonl`` (and the log): rejected updates, failures, retries."""
        record = {"time": time.time(), "event": kind, **fields}
        log.warning("%s", json.dumps(record))
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / EVENTS_FILE).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def client_failed(self, reply: Message, server_round: int | str) -> None:
        reason = str(reply.error.reason)[-500:]
        self.event("client-failed", round=server_round, node=reply.metadata.src_node_id, reason=reason)

    def start_state(self) -> ServerState:
        path = self.out / STATE_FILE
        if path.is_file():
            state = load_state(path)
            console.print(f"resuming after round {state.round} from {path}", highlight=False)
            return state
        return ServerState(0, self.initial)

    # -- one round ------------------------------------------------------------------------------
    def wait_for_clients(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.fed.connect_timeout
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= self.fed.quorum:
                return nodes
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(nodes)} clients connected in {self.fed.connect_timeout:g} s; "
                    f"a round needs {self.fed.quorum} (federate.min_clients)"
                )
            time.sleep(0.2)

    def round_config(self, server_round: int) -> dict[str, Any]:
        train = self.job.train
        return {
            "server-round": server_round,
            "lr": round_lr(train.lr, train.schedule, server_round, self.fed.rounds, train.min_lr_ratio),
            "proximal-mu": self.fed.proximal_mu if self.fed.algorithm == "fedprox" else 0.0,
        }

    def train_messages(self, nodes: list[int], weights: State, server_round: int) -> list[Message]:
        config = ConfigRecord(self.round_config(server_round))
        content = RecordDict({"arrays": ArrayRecord(weights), "config": config})
        return [Message(content=content, message_type=MessageType.TRAIN, dst_node_id=n) for n in nodes]

    def collect(self, replies: list[Message], weights: State, server_round: int) -> tuple[list[Update], list[dict]]:
        """The good updates among ``replies``; every failure and rejection is logged."""
        updates, metrics = [], []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.client_failed(reply, server_round)
                continue
            try:
                arrays = reply.content.array_records.get("arrays")
                meta = reply.content.metric_records.get("metrics")
                if arrays is None or meta is None:
                    raise BadUpdate("reply has no arrays or no metrics")
                update = check_update(arrays.to_torch_state_dict(), weights, meta.get("num-examples"), self.row_params)
            except (BadUpdate, ValueError, TypeError, KeyError) as err:
                self.event("update-rejected", round=server_round, node=node, reason=str(err))
                continue
            updates.append(update)
            metrics.append({k: float(v) for k, v in meta.items() if isinstance(v, int | float)})
        return updates, metrics

    def run_round(
        self, grid: Grid, context: Context | None, state: ServerState, server_round: int
    ) -> tuple[State, dict[str, Any]]:
        """Train one round, retrying when fewer than the quorum's updates are good."""
        for attempt in range(self.fed.retries + 1):
            nodes = self.wait_for_clients(grid)
            t0 = time.perf_counter()
            if self.fed.secure_aggregation:
                weights, metrics = self.secure_attempt(grid, context, nodes, state.weights, server_round)
                good = len(metrics)
            else:
                weights, metrics = self.plain_attempt(grid, nodes, state.weights, server_round)
                good = len(metrics)
            if weights is not None:
                examples = sum(m["num-examples"] for m in metrics)
                loss = sum(m.get("train_loss", 0.0) * m["num-examples"] for m in metrics)
                spent = [m["epsilon"] for m in metrics if "epsilon" in m]
                extra = {"epsilon": max(spent)} if spent else {}
                return weights, {
                    **extra,
                    "round": server_round,
                    "clients": len(nodes),
                    "updates": good,
                    "attempt": attempt + 1,
                    "examples": examples,
                    "train_loss": loss / examples,
                    "seconds": time.perf_counter() - t0,
                }
            self.event("round-retry", round=server_round, attempt=attempt + 1, good=good, quorum=self.fed.quorum)
        raise FederationError(
            f"round {server_round}: fewer than {self.fed.quorum} good updates in {self.fed.retries + 1} attempts "
            f"(see {self.out / EVENTS_FILE})"
        )

    def plain_attempt(
        self, grid: Grid, nodes: list[int], weights: State, server_round: int
    ) -> tuple[State | None, list[dict[str, float]]]:
        """Each client's update checked, the good ones averaged (None: fewer than the quorum)."""
        messages = self.train_messages(nodes, weights, server_round)
        replies = list(grid.send_and_receive(messages, timeout=self.fed.round_timeout))
        updates, metrics = self.collect(replies, weights, server_round)
        if len(nodes) > len(replies):
            missing = len(nodes) - len(replies)
            self.event("clients-timed-out", round=server_round, missing=missing, timeout=self.fed.round_timeout)
        if len(updates) < self.fed.quorum:
            return None, metrics
        for m, u in zip(metrics, updates, strict=True):
            m["num-examples"] = u.examples
        return aggregate(updates, weights, self.row_params), metrics

    def secure_attempt(
        self, grid: Grid, context: Context | None, nodes: list[int], weights: State, server_round: int
    ) -> tuple[State | None, list[dict[str, float]]]:
        """A SecAgg+ round: only the average is seen, so only the average is checked."""
        from kelm.app.federate.secure import secure_round

        if context is None:
            raise FederationError("secure aggregation needs the Flower run's context")
        merged, metrics = secure_round(grid, context, nodes, weights, self.round_config(server_round), self.fed)
        if len(metrics) < len(nodes):
            self.event("clients-dropped", round=server_round, dropped=len(nodes) - len(metrics), secure=True)
        if merged is None or len(metrics) < self.fed.quorum:
            return None, metrics
        try:
            check_update(merged, weights, 1.0)
        except BadUpdate as err:
            self.event("aggregate-rejected", round=server_round, reason=str(err))
            return None, metrics
        return merged, metrics

    # -- the run --------------------------------------------------------------------------------
    def run(self, grid: Grid, context: Context | None = None) -> dict[str, Any]:
        state = self.start_state()
        t0 = time.perf_counter()
        for server_round in range(state.round + 1, self.fed.rounds + 1):
            weights, record = self.run_round(grid, context, state, server_round)
            if server_round % self.fed.eval_every == 0 or server_round == self.fed.rounds:
                record["valid"] = evaluate_state(self.task, self.job.train, weights, "valid")
            state = ServerState(server_round, weights, [*state.history, record])
            save_state(self.out / STATE_FILE, state)
            console.print(round_line(record, self.fed.rounds, self.task.monitor), highlight=False)
        client_test = self.client_test(grid, state.weights)
        return self.finish(state, time.perf_counter() - t0, client_test)

    def client_test(self, grid: Grid, weights: State) -> dict[str, float]:
        """The global model on every client's own test data, averaged weighted by its size."""
        nodes = self.wait_for_clients(grid)
        content = RecordDict({"arrays": ArrayRecord(weights)})
        messages = [Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=n) for n in nodes]
        parts = []
        for reply in grid.send_and_receive(messages, timeout=self.fed.round_timeout):
            if reply.has_error():
                self.client_failed(reply, "test")
                continue
            metrics = {k: float(v) for k, v in reply.content["metrics"].items()}
            parts.append((metrics.pop("num-examples", 0.0), metrics))
        metrics, answered = weighted_mean(parts), len(parts)
        return {**metrics, "clients": float(answered)} if metrics else {}

    def privacy(self, state: ServerState) -> dict[str, Any]:
        """``privacy``: the largest ε any client reported spending, at the run's δ."""
        if not self.fed.private:
            return {}
        spent = [h["epsilon"] for h in state.history if "epsilon" in h]
        fed = self.fed
        return {
            "privacy": {
                "epsilon": max(spent) if spent else None,
                "delta": fed.dp_delta,
                "target_epsilon": fed.dp_epsilon,
                "noise_multiplier": fed.dp_noise_multiplier,
                "max_grad_norm": fed.dp_max_grad_norm,
                "accountant": "rdp",
            }
        }

    def finish(self, state: ServerState, seconds: float, client_test: dict[str, float]) -> dict[str, Any]:
        """The global model as a kelm model folder, its test metrics, and ``metrics.json``."""
        folder = self.out / "model"
        folder.mkdir(parents=True, exist_ok=True)
        from safetensors.torch import save_file

        with atomic_path(folder / WEIGHTS) as tmp:
            save_file(distinct_tensors(state.weights), str(tmp))
        write_toml(folder / CONFIG, {**self.job.run.as_dict(), **self.model_spec})
        self.task.save_artifacts(folder)
        valid = state.history[-1].get("valid", {}) if state.history else {}
        summary = {
            "task": self.task.name,
            "mode": "federated",
            "federate": self.fed.model_dump(),
            "rounds": state.round,
            "wall_seconds": seconds,
            "valid": valid,
            "test": evaluate_state(self.task, self.job.train, state.weights, "test"),
            "client_test": client_test,
            **self.privacy(state),
            "history": state.history,
            "config": self.job.run.as_dict(),
        }
        write_run_summary(self.out, summary)
        return summary
