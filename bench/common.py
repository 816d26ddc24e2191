"""Shared benchmark helpers: the machine description, result printing and the kelm CLI."""

from __future__ import annotations

import json
import os
import platform
import subprocess
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


def bundled_text() -> str:
    """The bundled UMLS entity descriptions (~190 KB of English), a small LM corpus that ships with kelm."""
    from kelm.data import bundled_path

    return str(bundled_path("umls") / "entity2textlong.txt")


def train_run(config: dict[str, Any], out_dir: str, nproc: int = 1) -> dict[str, Any]:
    """Run `kelm train` on a config dict (written as TOML) and return the run's metrics.json."""
    import subprocess
    from pathlib import Path

    import tomli_w

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out.parent / f"{out.name}.toml"
    cfg_file.write_text(tomli_w.dumps(config))
    cmd = [sys.executable, "-m", "kelm.cli", "train", str(cfg_file), "--out", str(out)]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    env = {**os.environ, "KELM_PROGRESS": "0"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())


def kelm(*args: str) -> str:
    """Run ``kelm ARGS`` as a user would; its stdout, or exit with its stderr."""
    done = subprocess.run([sys.executable, "-m", "kelm.cli", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"kelm {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout
