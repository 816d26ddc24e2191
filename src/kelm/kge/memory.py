"""What an entity table costs in memory while it trains, checked before it is allocated."""

from __future__ import annotations

import os

import torch

from kelm.errors import ConfigError

#: Tensors of the table's shape each optimizer keeps per parameter (Adam: two moments).
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "adagrad": 1, "sgd": 1}


def table_copies(optimizer: str) -> int:
    """Tensors of the table's shape in training: weights, gradient and the optimizer's state."""
    return 2 + OPTIMIZER_STATES.get(optimizer, 2)


def table_bytes(num_entities: int, dim: int, optimizer: str, element_bytes: int = 4) -> int:
    """Bytes of an ``(num_entities, dim)`` table in training: weights, gradient and optimizer state."""
    return num_entities * dim * element_bytes * table_copies(optimizer)


def available_bytes(device: torch.device) -> int:
    """Free memory of ``device`` (a GPU's own memory, else the host's available memory)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_table_fits(
    num_entities: int,
    dim: int,
    optimizer: str,
    world: int = 1,
    ranks_here: int = 1,
    device: torch.device | None = None,
    free: int | None = None,
) -> None:
    """Raise a one-line `ConfigError` unless the table, split over ``world`` ranks (``ranks_here``
    of them sharing this machine's memory, or each with its own GPU), fits in free memory."""
    device = device or torch.device("cpu")
    total = table_bytes(num_entities, dim, optimizer)
    per_rank = -(-total // world)
    need = per_rank * (ranks_here if device.type != "cuda" else 1)
    free = available_bytes(device) if free is None else free
    if need <= free:
        return
    split = f", {_gib(per_rank)} on each of {world} processes" if world > 1 else ""
    raise ConfigError(
        f"the entity table does not fit in memory: {num_entities:,} entities x {dim} x 4 bytes x "
        f"{table_copies(optimizer)} (weights, gradient, {optimizer} state) = {_gib(total)}{split}, "
        f"but {device.type} has {_gib(free)} free; lower task.dim, or shard the table over more "
        "processes (task.shard_entities with --nproc)"
    )


__all__ = ["OPTIMIZER_STATES", "available_bytes", "check_table_fits", "table_bytes", "table_copies"]
