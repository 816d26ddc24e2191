"""Distributed checkpoints (DCP) that load at any world size, written atomically.

Layout of a run's ``checkpoints/`` folder::

    step_00000100/        one DCP checkpoint: model, optimizer, scheduler, trainer state
        .metadata
        __0_0.distcp ...
        rng_rank0.pt ...  per-rank RNG states
        kelm.json         step, world size and the model fingerprint
    latest                the name of the newest complete checkpoint

Each checkpoint is written to ``step_N.partial`` and renamed once every rank has finished,
then ``latest`` is replaced atomically, so a crash never leaves a checkpoint that loads half.
Model and optimizer state go through ``torch.distributed.checkpoint.state_dict``, which gives
the same keys for plain, DDP and FSDP2 models; DCP reshards them on load.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from kelm.atomic import write_text_atomic
from kelm.errors import KelmError

LATEST = "latest"
META = "kelm.json"


class CheckpointError(KelmError):
    """A checkpoint is missing, incomplete, corrupt, or belongs to another model."""


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Parameter names and global shapes: a checkpoint only loads into a model with the same ones."""
    shapes = {}
    for name, p in model.named_parameters():
        shapes[name.replace("_checkpoint_wrapped_module.", "")] = list(p.shape)
    return {"class": type(model).__name__, "parameters": shapes}


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".partial"))


def save_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    fingerprint: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Collective: every rank calls it. Returns the checkpoint folder."""
    rank = dist.get_rank()
    final = root / f"step_{step:08d}"
    partial = root / f"step_{step:08d}.partial"
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd, "extra": extra}, checkpoint_id=str(partial))
    torch.save(rng_state(), partial / f"rng_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        meta = {"step": step, "world_size": dist.get_world_size(), "fingerprint": fingerprint}
        (partial / META).write_text(json.dumps(meta), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        write_text_atomic(root / LATEST, final.name)
        for old in checkpoint_dirs(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder, a run's ``checkpoints/`` folder, or a run folder → the checkpoint to load."""
    for root in (path, path / "checkpoints"):
        if (root / META).is_file():
            return root
        if (root / LATEST).is_file():
            target = root / (root / LATEST).read_text(encoding="utf-8").strip()
            if not target.is_dir():
                raise CheckpointError(f"{root / LATEST} points to {target.name}, which does not exist")
            return target
    raise CheckpointError(f"no checkpoint found in {path}")


def read_meta(ckpt: Path) -> dict[str, Any]:
    try:
        meta = json.loads((ckpt / META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: cannot read {META} ({err})") from None
    if not (ckpt / ".metadata").is_file():
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: DCP .metadata is missing")
    return meta


def load_checkpoint(
    ckpt: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra_template: dict[str, Any],
    fingerprint: dict[str, Any],
) -> tuple[dict[str, Any], int]:
    """Collective: load into ``model``/``optimizer`` (any world size); returns (extra, saved world size)."""
    meta = read_meta(ckpt)
    if meta.get("fingerprint") != fingerprint:
        saved = meta.get("fingerprint", {}).get("parameters", {})
        diff = sorted(set(saved) ^ set(fingerprint["parameters"]))
        detail = f"parameters differ: {', '.join(diff[:3])}" if diff else "parameter shapes differ"
        raise CheckpointError(f"checkpoint {ckpt} was saved from another model ({detail})")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd, "extra": extra_template}
    try:
        dcp.load(state, checkpoint_id=str(ckpt))
    except Exception as err:  # DCP raises CheckpointException with per-rank causes
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {ckpt} is corrupt or unreadable: {first}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng_file = ckpt / f"rng_rank{dist.get_rank()}.pt"
    if meta["world_size"] == dist.get_world_size() and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return state["extra"], int(meta["world_size"])
