"""What a compression report measures: size on disk, parameters, latency percentiles and throughput."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def weight_bytes(folder: Path) -> int:
    """Bytes of the weight files (``*.safetensors``) under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors") if p.is_file())


def parameter_count(model: nn.Module) -> int:
    """Distinct parameters; an int8 runtime's packed weights count by their logical shape."""
    seen: set[int] = set()
    total = 0
    for m in model.modules():
        for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            if name.endswith("position_ids") or name.endswith("token_type_ids") or id(t) in seen:
                continue
            if isinstance(t, nn.Parameter):
                seen.add(id(t))
                total += t.numel()
        packed = getattr(m, "weight", None)
        if callable(packed) and hasattr(m, "in_features"):  # torch.ao dynamic Linear: weight() unpacks
            total += m.in_features * m.out_features + m.out_features
    return total


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` percentile (0-100) of sorted values, linearly interpolated."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@torch.inference_mode()
def interleaved_latency(
    runs: dict[str, tuple[Callable[[Any], Any], Sequence[Any]]], items: int, rounds: int, warmup: int = 2
) -> dict[str, dict[str, float]]:
    """Time each run (name → ``(call, batches)``: ``call(batch)`` over its own batches, e.g. its
    own tokenization of the same texts) one round at a time in turn, so a change in the machine's
    load falls on all alike: p50 and p99 latency per call in milliseconds, and throughput in items
    per second (``items`` per pass over the batches)."""
    for call, batches in runs.values():
        for b in list(batches)[:warmup]:
            call(b)
    times: dict[str, list[float]] = {name: [] for name in runs}
    totals = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, (call, batches) in runs.items():
            start = time.perf_counter()
            for b in batches:
                t = time.perf_counter()
                call(b)
                times[name].append(time.perf_counter() - t)
            totals[name] += time.perf_counter() - start
    out: dict[str, dict[str, float]] = {}
    for name, ts in times.items():
        ts.sort()
        out[name] = {
            "p50_ms": percentile(ts, 50) * 1e3,
            "p99_ms": percentile(ts, 99) * 1e3,
            "items_per_second": items * rounds / totals[name] if totals[name] > 0 else float("nan"),
        }
    return out


__all__ = ["folder_bytes", "interleaved_latency", "parameter_count", "percentile", "weight_bytes"]
