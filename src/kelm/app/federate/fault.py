"""Fault injection for the federated fault tests, a testing hook like `kelm.train.fault`.

``KELM_FEDERATE_FAULT=KIND:CLIENT[:ROUND]`` makes client ``CLIENT`` misbehave in round ``ROUND``
(every round when left out):

- ``die``: the client process kills itself with SIGKILL before it replies;
- ``hang``: it sleeps for ``KELM_FEDERATE_HANG`` seconds (default 3600) before it trains;
- ``corrupt``: its update carries NaN values; ``mismatch``: a parameter of the wrong shape;
- ``fail``: it raises an error instead of training (after a secure round shared its keys: a
  client that drops mid-round).

``KELM_FEDERATE_DUMP=DIR`` makes every client of a secure round save its plaintext update to
``DIR/round-R-client-I.pt``, so a test can compare the server's average with the true one.
"""

from __future__ import annotations

import os
import signal
import time

import torch

from kelm.app.federate.updates import ROWS, WEIGHT, State


def planned_fault(index: int, server_round: int) -> str | None:
    """The fault the environment asks of client ``index`` in ``server_round``, if any."""
    spec = os.environ.get("KELM_FEDERATE_FAULT")
    if not spec:
        return None
    kind, _, rest = spec.partition(":")
    client, _, when = rest.partition(":")
    if int(client) != index or (when and int(when) != server_round):
        return None
    return kind


def before_training(index: int, server_round: int) -> None:
    kind = planned_fault(index, server_round)
    if kind == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        time.sleep(float(os.environ.get("KELM_FEDERATE_HANG", "3600")))
    if kind == "fail":
        raise RuntimeError(f"client {index} fails in round {server_round} (KELM_FEDERATE_FAULT)")


def after_training(index: int, server_round: int, update: State) -> State:
    kind = planned_fault(index, server_round)
    if kind not in ("corrupt", "mismatch"):
        return update
    name = next(k for k in update if not k.endswith((ROWS, WEIGHT)) and update[k].is_floating_point())
    bad = dict(update)
    if kind == "corrupt":
        bad[name] = torch.full_like(update[name], float("nan"))
    else:
        bad[name] = torch.zeros(*update[name].shape[:-1], update[name].shape[-1] + 1, dtype=update[name].dtype)
    return bad


def dump_update(index: int, server_round: int, update: State, examples: int) -> None:
    folder = os.environ.get("KELM_FEDERATE_DUMP")
    if folder:
        torch.save({"update": update, "examples": examples}, f"{folder}/round-{server_round}-client-{index}.pt")
