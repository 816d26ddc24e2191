"""Count the payload of ``torch.distributed`` collectives, for communication figures.

`install` wraps the collective functions of the ``torch.distributed`` module. A call is counted
with the bytes of the tensor(s) this rank hands in: the whole tensor for all-reduce, broadcast
and reduce; the local input for all-gather and reduce-scatter. That is the payload, not the
bytes on the wire, which depend on the algorithm (a ring all-reduce moves about twice the
payload).

Counted: every call made through the module attribute (``dist.all_reduce(...)``) after
`install`, from any thread. That covers DDP comm hooks (`allreduce_hook` and PowerSGD, whose
P and Q all-reduces run inside future callbacks on the backend's threads), DiLoCo's outer
sync, FSDP2's ``all_gather_single``/``reduce_scatter_single`` and the Trainer's own metric
all-reduces.

Not counted: DDP's built-in C++ reducer (a DDP model without a comm hook) and its initial
C++ parameter broadcast; functional collectives (``torch.distributed._functional_collectives``,
used by DTensor redistribution, e.g. ``clip_grad_norm_`` over DTensors or ``full_tensor()``);
object collectives and barriers (DCP checkpointing); methods called on a ``ProcessGroup``
directly; and functions bound by name before `install` (``from torch.distributed import ...``).
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

#: Collective → the parameter holding the tensor(s) this rank contributes.
PAYLOAD_ARG = {
    "all_reduce": "tensor",
    "all_reduce_coalesced": "tensors",
    "broadcast": "tensor",
    "reduce": "tensor",
    "all_gather": "tensor",
    "all_gather_into_tensor": "input_tensor",
    "all_gather_single": "input_tensor",
    "reduce_scatter": "input_list",
    "reduce_scatter_tensor": "input",
    "reduce_scatter_single": "input",
    "all_to_all_single": "input",
}


@dataclass
class OpCount:
    calls: int = 0
    bytes: int = 0


_lock = threading.Lock()
_counts: dict[str, OpCount] = {}
_installed = False


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(o) for o in obj)
    return 0


def _counting(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(fn)
    arg = PAYLOAD_ARG[name]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            payload = signature.bind(*args, **kwargs).arguments.get(arg)
        except TypeError:  # let the real function report the bad call
            payload = None
        size = _tensor_bytes(payload)
        with _lock:
            count = _counts.setdefault(name, OpCount())
            count.calls += 1
            count.bytes += size
        return fn(*args, **kwargs)

    wrapper.__kelm_counted__ = True  # type: ignore[attr-defined]
    return wrapper


def install() -> None:
    """Start counting (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        for name in PAYLOAD_ARG:
            fn = getattr(dist, name, None)
            if fn is not None and not getattr(fn, "__kelm_counted__", False):
                setattr(dist, name, _counting(name, fn))
        _installed = True


def stats() -> dict[str, OpCount]:
    """A copy of the per-collective counts since `install`."""
    with _lock:
        return {name: OpCount(c.calls, c.bytes) for name, c in _counts.items()}


def since(snapshot: dict[str, OpCount]) -> dict[str, OpCount]:
    """Counts since an earlier `stats` snapshot, for collectives called at least once since."""
    out = {}
    for name, now in stats().items():
        then = snapshot.get(name, OpCount())
        if now.calls > then.calls:
            out[name] = OpCount(now.calls - then.calls, now.bytes - then.bytes)
    return out


def bytes_sent(op: str | None = None) -> int:
    """Payload bytes this process handed to counted collectives (of one kind, if ``op``) since `install`."""
    with _lock:
        return sum(c.bytes for name, c in _counts.items() if op is None or name == op)


def calls(op: str | None = None) -> int:
    """Counted collective calls (of one kind, if ``op``) since `install`."""
    with _lock:
        return sum(c.calls for name, c in _counts.items() if op is None or name == op)
