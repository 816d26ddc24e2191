"""Launching a training command on several processes through torchrun.

``kelm train ... --nproc N`` runs the same command in ``N`` processes: this process becomes the
torchrun agent (``torch.distributed.run``, called in-process so that a failed job ends in one
line rather than torchrun's report), and each worker runs ``python -m kelm.cli.worker
train ...`` without the launch flags. On one node the rendezvous is a free loopback port; on
several, ``--nnodes`` with ``--rdzv-endpoint`` (c10d) or ``--node-rank`` (static) is passed
through. ``--max-restarts`` restarts a failed job, which continues from its last checkpoint.

Workers report a `KelmError` through a file in ``$KELM_ERROR_DIR``; the agent raises it again,
so the user sees the worker's own one-line message. Without that variable (torchrun started by
hand), rank 0 prints it.
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kelm.errors import ConfigError, KelmError

ERROR_DIR_ENV = "KELM_ERROR_DIR"
#: The module each worker runs with ``python -m`` (the command line, quiet on ranks other than 0).
WORKER_MODULE = "kelm.cli.worker"


class LaunchError(KelmError):
    """A launched training job failed."""


@dataclass(frozen=True)
class LaunchSpec:
    """How many processes, where, and how often to restart."""

    nproc: int = 1
    max_restarts: int = 0
    nnodes: str = "1"
    node_rank: int | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None

    @property
    def world_size(self) -> int | None:
        """Processes in the job, when fixed (not for an elastic ``MIN:MAX`` node range)."""
        return None if ":" in self.nnodes else self.nproc * int(self.nnodes)


def local_capacity() -> tuple[int, str]:
    """How many processes this machine may run: one per GPU, else one per CPU core."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count(), "GPU"
    return os.cpu_count() or 1, "CPU core"


def check_spec(spec: LaunchSpec) -> None:
    limit, what = local_capacity()
    if spec.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {spec.nproc}")
    if spec.nproc > limit:
        raise ConfigError(
            f"--nproc {spec.nproc} is more than this machine allows: it has {limit} {what}{'s' if limit != 1 else ''}"
        )
    if spec.max_restarts < 0:
        raise ConfigError(f"--max-restarts must be 0 or more, got {spec.max_restarts}")
    if not re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", spec.nnodes):
        raise ConfigError(f"--nnodes expects N or MIN:MAX, got '{spec.nnodes}'")
    if spec.rdzv_endpoint is not None and not re.fullmatch(r"\[?[\w.\-:]+\]?:\d+", spec.rdzv_endpoint):
        raise ConfigError(f"--rdzv-endpoint expects HOST:PORT, got '{spec.rdzv_endpoint}'")
    if (spec.nnodes != "1" or spec.node_rank is not None) and not spec.rdzv_endpoint:
        raise ConfigError("several nodes need --rdzv-endpoint HOST:PORT (a port on the first node)")


def torchrun_argv(spec: LaunchSpec, worker_args: list[str]) -> list[str]:
    """The arguments for ``python -m torch.distributed.run`` that run ``kelm <worker_args>``."""
    argv = ["--nproc-per-node", str(spec.nproc), "--nnodes", spec.nnodes, "--max-restarts", str(spec.max_restarts)]
    if spec.node_rank is not None:
        # static rendezvous: every node names its rank; node 0 hosts the store at the endpoint
        argv += ["--rdzv-backend", "static", "--node-rank", str(spec.node_rank), "--rdzv-endpoint", spec.rdzv_endpoint]
    elif spec.rdzv_endpoint:
        argv += ["--rdzv-backend", "c10d", "--rdzv-endpoint", spec.rdzv_endpoint, "--rdzv-id", spec.rdzv_id or "kelm"]
    else:
        from kelm.train.distributed import free_port

        argv += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
        argv += ["--rdzv-id", spec.rdzv_id or uuid.uuid4().hex]
    return [*argv, "-m", WORKER_MODULE, *worker_args]


def launch(spec: LaunchSpec, worker_args: list[str], threads: int | None = None) -> None:
    """Run the job with torchrun in this process; raise a one-line `KelmError` if it fails."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    check_spec(spec)
    argv = torchrun_argv(spec, worker_args)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads or max(1, (os.cpu_count() or 1) // spec.nproc)))
    with tempfile.TemporaryDirectory(prefix="kelm-launch-") as error_dir:
        os.environ[ERROR_DIR_ENV] = error_dir
        try:
            run(get_args_parser().parse_args(argv))
        except ChildFailedError as err:
            raise _job_error(err, Path(error_dir), spec) from None
        finally:
            os.environ.pop(ERROR_DIR_ENV, None)


def _job_error(err: Any, error_dir: Path, spec: LaunchSpec) -> KelmError:
    # only the last attempt's reports: an earlier attempt's error was followed by a restart
    reports = [p for p in error_dir.glob("attempt*_rank*.txt") if _report_key(p)[0] == spec.max_restarts]
    reports.sort(key=_report_key)
    if reports:
        code, _, message = reports[0].read_text(encoding="utf-8").partition("\n")
        failure = KelmError(message.strip())
        failure.exit_code = int(code)
        return failure
    # The root cause: the agent stops the other workers with SIGTERM once one has failed.
    failures = sorted(getattr(err, "failures", {}).items())
    causes = [(r, f) for r, f in failures if f.exitcode != -signal.SIGTERM] or failures
    rank, first = causes[0] if causes else (0, None)
    if first is None:
        what = "failed"
    elif first.exitcode < 0:
        what = f"was killed by signal {-first.exitcode}"
    else:
        what = f"exited with code {first.exitcode}"
    tries = f" after {spec.max_restarts} restart{'s' if spec.max_restarts != 1 else ''}" if spec.max_restarts else ""
    return LaunchError(f"training failed{tries}: rank {rank} {what} (its output is above)")


def _report_key(path: Path) -> tuple[int, int]:
    """(attempt, rank) of a worker's error report."""
    attempt, rank = (int(x) for x in re.findall(r"\d+", path.name)[:2])
    return attempt, rank


def report_worker_error(err: KelmError, rank: int) -> None:
    """Hand a worker's error to the agent (or, run by hand, print it on rank 0)."""
    error_dir = os.environ.get(ERROR_DIR_ENV)
    if error_dir and Path(error_dir).is_dir():
        attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        path = Path(error_dir) / f"attempt{attempt}_rank{rank}.txt"
        path.write_text(f"{err.exit_code}\n{err}", encoding="utf-8")
    elif rank == 0:
        from rich.markup import escape

        from kelm.progress import console

        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
