"""Count the bytes that Python-level collectives send, for communication figures.

DDP comm hooks (plain all-reduce and PowerSGD) and DiLoCo's outer sync call the
``torch.distributed`` functions patched here, so one counter covers all of them. FSDP2 issues
its collectives from C++, which this counter does not see.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

_COUNTED = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast")
_state = {"bytes": 0, "calls": 0, "installed": False}


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(o) for o in obj)
    return 0


def _counting(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tensor = args[0] if args else kwargs.get("tensor")
        _state["bytes"] += _tensor_bytes(tensor)
        _state["calls"] += 1
        return fn(*args, **kwargs)

    return wrapper


def install() -> None:
    """Start counting (idempotent)."""
    if _state["installed"]:
        return
    for name in _COUNTED:
        setattr(dist, name, _counting(getattr(dist, name)))
    _state["installed"] = True


def bytes_sent() -> int:
    """Payload bytes this process handed to counted collectives since `install`."""
    return int(_state["bytes"])


def calls() -> int:
    return int(_state["calls"])
