"""Optimizer state of parameters a model shards itself, saved in a DCP-reshardable layout.

A plan that shards parameters over ranks (experts, entity rows) keeps plain local tensors in the
optimizer, so its state dict holds this rank's rows only. These hooks pack each such parameter's
state tensors as DTensors of its layout when the state dict is taken (DCP then writes every row
once and reshards on load) and unpack them to local tensors when one is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.distributed.tensor import DTensor


def register_sharded_state(optimizer: torch.optim.Optimizer, packers: dict[int, Callable[[Any], Any]]) -> None:
    """``packers``: optimizer parameter index → a function that turns one of that parameter's
    state values into its DTensor (returning other values, e.g. a step count, as they are)."""
    if not packers:
        return

    def to_dtensors(_opt: Any, state: dict[str, Any]) -> dict[str, Any]:
        packed = dict(state["state"])
        for i, pack in packers.items():
            if i in packed:
                packed[i] = {k: pack(v) for k, v in packed[i].items()}
        return {**state, "state": packed}

    def to_local(_opt: Any, state: dict[str, Any]) -> dict[str, Any]:
        # keys may be indices or parameter names here (`set_state_dict` loads by name)
        packed = {
            key: {k: v.to_local() if isinstance(v, DTensor) else v for k, v in entry.items()}
            for key, entry in state["state"].items()
        }
        return {**state, "state": packed}

    optimizer.register_state_dict_post_hook(to_dtensors)
    optimizer.register_load_state_dict_pre_hook(to_local)


def optimizer_indices(optimizer: torch.optim.Optimizer) -> dict[int, int]:
    """``id(parameter)`` → its index in the optimizer's state dict."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return {id(p): i for i, p in enumerate(params)}


__all__ = ["optimizer_indices", "register_sharded_state"]
