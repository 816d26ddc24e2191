"""Will the embedding tables fit? Their bytes, counted before anything is allocated.

Training holds, per parameter element: the weight, its gradient and the optimizer's state (two
moments for Adam/AdamW, one sum for Adagrad, none for plain SGD). The tables are
``entities x dim`` and ``relations x relation_dim``; everything else a KGE model holds is small.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from kelm.errors import ConfigError

#: Optimizer state tensors kept per parameter element.
STATE_PER_ELEMENT = {"adam": 2, "adamw": 2, "adagrad": 1, "sgd": 0}


def training_bytes(elements: int, optimizer: str, element_size: int = 4) -> int:
    """Bytes of ``elements`` parameters while training: weights, gradients and optimizer state."""
    return elements * element_size * (2 + STATE_PER_ELEMENT.get(optimizer, 2))


def available_bytes(device: torch.device | None = None) -> int | None:
    """Memory free for new allocations on ``device`` (the host's MemAvailable for a CPU), or None
    when it cannot be told."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_tables_fit(
    entity_shape: tuple[int, int],
    other_elements: int,
    optimizer: str,
    shards: int = 1,
    processes: int = 1,
    device: torch.device | None = None,
) -> int:
    """Raise `ConfigError` unless the model, trained with ``optimizer``, fits in free memory.

    ``entity_shape``: the entity table's ``(entities, dim)``; ``other_elements``: every other
    parameter (relation tables); ``shards``: ranks the entity table is split over (each holds
    ``1 / shards`` of it); ``processes``: ranks sharing this host's memory. Returns the bytes one
    rank needs."""
    num_entities, dim = entity_shape
    per_rank = training_bytes(-(-num_entities // shards) * dim + other_elements, optimizer)
    free = available_bytes(device)
    need = per_rank * (processes if device is None or device.type == "cpu" else 1)
    if free is not None and need > free:
        where = f" over {processes} processes" if processes > 1 else ""
        raise ConfigError(
            f"task: the embedding tables do not fit: {num_entities:,} entities x dim {dim} x 4 bytes x "
            f"(weights, gradients, {optimizer} state){where} need {_gib(need)}, but {_gib(free)} is free; "
            "lower task.dim, shard the entity table over more processes, or use a machine with more memory"
        )
    return per_rank


__all__ = ["STATE_PER_ELEMENT", "available_bytes", "check_tables_fit", "training_bytes"]
