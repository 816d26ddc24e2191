"""Run a function in several local processes joined by one gloo process group.

``run_distributed(fn, world_size, *args)`` spawns ``world_size`` processes on a free loopback
port, calls ``fn(rank, world_size, *args)`` in each with one torch thread, and returns the
per-rank results (anything ``torch.save`` can write). A failure in any rank re-raises here with
that rank's traceback; a run past ``timeout`` kills every process it started.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kelm.train.distributed import free_port


def _entry(rank: int, fn: Callable[..., Any], world_size: int, port: int, out: str, args: tuple[Any, ...]) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120.0) -> list[Any]:
    """``[fn(0, world_size, *args), ..., fn(world_size - 1, world_size, *args)]``, each in its own process.

    ``fn`` must be importable by name (a module-level function). A rank killed by a signal before
    it raised anything (a native abort in the transport, seen rarely on a loaded machine) gets one
    fresh start of every rank on a new port, its folder arguments emptied first; a Python
    exception in any rank fails at once.
    """
    try:
        return _run_once(fn, world_size, args, timeout)
    except mp.ProcessExitedException as err:
        if not err.signal_name:
            raise
        warnings.warn(f"{fn.__name__}: rank {err.error_index} died by {err.signal_name}; starting again", stacklevel=2)
        return _run_once(fn, world_size, _fresh_folders(args), timeout)


def _fresh_folders(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` after emptying each folder among them, so that a second start does not find the
    first one's half-written runs (training refuses a folder that holds checkpoints)."""
    for a in args:
        if isinstance(a, str) and os.path.isdir(a):
            for child in Path(a).iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    return args


def _run_once(fn: Callable[..., Any], world_size: int, args: tuple[Any, ...], timeout: float) -> list[Any]:
    with tempfile.TemporaryDirectory(prefix="kelm-dist-") as out:
        ctx = mp.start_processes(
            _entry,
            args=(fn, world_size, free_port(), out, args),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=1.0):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{fn.__name__} did not finish within {timeout:.0f}s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                p.join()
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
