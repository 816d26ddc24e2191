"""The two runs a federated one is judged against, on the same data and the same epochs:
every client alone on its own part, and one model on all the data pooled."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kelm.app.federate.local import FederatedJob, client_train_config, evaluation_weight
from kelm.app.federate.updates import weighted_mean
from kelm.app.run import RunConfig
from kelm.train.distributed import shutdown
from kelm.train.logging import write_run_summary
from kelm.train.trainer import Trainer


def epochs_of(job: FederatedJob) -> int:
    """The epochs a baseline trains: as many as a client trains over all rounds."""
    return job.fed.rounds * job.fed.local_epochs


def train_local_only(run: RunConfig, out_dir: str | Path) -> dict[str, Any]:
    """Each client trains alone on its part for as many epochs as the federated run; its model is
    tested on its own test part; the metrics are averaged weighted by test size."""
    job = FederatedJob(run, run.config.federate, Path(out_dir))
    t0 = time.perf_counter()
    clients, parts = [], []
    for index in range(job.fed.clients):
        task, _, size = job.client_part(index)
        cfg = client_train_config(job, 0, index, job.train.lr, len(task.train_data()))
        cfg = cfg.model_copy(update={"epochs": epochs_of(job), "max_steps": None, "schedule": job.train.schedule})
        trainer = Trainer(task, cfg, job.client_dir(index), run_config={"train": cfg.model_dump()})
        try:
            summary = trainer.fit()
        finally:
            trainer.close()
            shutdown()
        weight = evaluation_weight(task)
        clients.append({"client": index, "train_size": size, "test_size": weight, "test": summary["test"]})
        if summary["test"]:
            parts.append((weight, summary["test"]))
    result = {
        "task": run.task_config.name,
        "mode": "local-only",
        "federate": job.fed.model_dump(),
        "epochs": epochs_of(job),
        "wall_seconds": time.perf_counter() - t0,
        "client_test": weighted_mean(parts),
        "clients": clients,
        "config": run.as_dict(),
    }
    write_run_summary(job.out_dir, result)
    return result
