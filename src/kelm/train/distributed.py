"""Process-group set-up. The group is always initialised, gloo at world size 1 too, so that one
code path runs from a single process to many."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

_SELF_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_state = {"own_env": False}


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_rank() -> int:
    """This process's global rank from the launcher's environment (0 when not launched)."""
    return int(os.environ.get("RANK", "0"))


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def init_distributed(device: str | None = None) -> DistInfo:
    """Join (or create, when not launched by torchrun) the default process group."""
    if not dist.is_initialized() and "RANK" not in os.environ:
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
        )
        _state["own_env"] = True
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device, local_rank) if device == "cuda" else torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        # NCCL for device tensors; gloo keeps the small CPU reductions (metrics, byte counts) working
        backend = "cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo"
        if launched_by_torchrun():
            # The agent's store outlives a restart with the failed attempt's keys in it (peer
            # addresses of dead processes); a prefix per attempt keeps the new group clear of them.
            store, rank, world = next(dist.rendezvous("env://"))
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            prefixed = dist.PrefixStore(f"kelm/attempt_{attempt}", store)
            dist.init_process_group(backend=backend, store=prefixed, rank=rank, world_size=world)
        else:
            dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def shutdown() -> None:
    """Destroy the default group; forget the single-process environment `init_distributed` made up."""
    if dist.is_initialized():
        dist.destroy_process_group()
    if _state["own_env"]:
        for key in _SELF_ENV:
            os.environ.pop(key, None)
        _state["own_env"] = False
