"""Shared benchmark helpers: the machine description and result printing."""

from __future__ import annotations

import json
import os
import platform
import sys
from typing import Any

import torch


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def emit(name: str, results: dict[str, Any], as_json: bool) -> None:
    """Print one JSON line (``--json``) or a readable summary."""
    payload = {"bench": name, "machine": machine(), **results}
    if as_json:
        print(json.dumps(payload))
        return
    print(f"== {name} on {payload['machine']['cpu']} ({payload['machine']['cores']} cores)")
    for key, value in results.items():
        print(f"{key}: {json.dumps(value)}")
