"""A federated run on one machine: Flower's simulation engine runs the clients as workers."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from kelm.app.federate.apps import make_client_app, make_server_app
from kelm.app.federate.local import FederatedJob
from kelm.app.run import RunConfig
from kelm.errors import KelmError


def quiet_flower(verbose: bool = False) -> None:
    """Flower's and Ray's INFO chatter off (warnings and errors stay)."""
    level = logging.INFO if verbose else logging.ERROR
    logging.getLogger("flwr").setLevel(level)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    warnings.filterwarnings("ignore", module="ray")


def simulate(run: RunConfig, out_dir: str | Path, verbose: bool = False) -> dict[str, Any]:
    """Run ``run`` federated as its ``[federate]`` section says; returns the ``metrics.json`` summary."""
    from flwr.simulation import run_simulation

    quiet_flower(verbose)
    from kelm.app.federate.server import FederatedServer

    fed = run.config.federate
    job = FederatedJob(run, fed, Path(out_dir))
    server = FederatedServer(job)  # a bad config fails here, before any worker starts
    outcome: dict[str, Any] = {}
    cores = os.cpu_count() or 1
    per_client = min(fed.client_threads, cores)
    at_once = fed.parallel_clients or max(1, cores // per_client)
    backend = {
        "client_resources": {"num_cpus": per_client, "num_gpus": 0.0},
        "init_args": {"num_cpus": per_client * at_once, "include_dashboard": False, "logging_level": logging.ERROR},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_simulation(
            server_app=make_server_app(lambda _: job, outcome, server),
            client_app=make_client_app(lambda _: job),
            num_supernodes=fed.clients,
            backend_config=backend,
            verbose_logging=verbose,
        )
    if "error" in outcome:
        err = outcome["error"]
        if isinstance(err, KelmError):
            raise err
        raise RuntimeError(f"the federated server failed: {err}") from err
    if "summary" not in outcome:
        raise RuntimeError("the federated simulation ended without a result")
    return outcome["summary"]
