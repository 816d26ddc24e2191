"""Distributed checkpoints (DCP) that load at any world size, written atomically.

Layout of a run's ``checkpoints/`` folder::

    step_00000100/        one checkpoint
        .metadata         DCP: model and optimizer, resharded on load
        __0_0.distcp ...
        state.pt          trainer state, scheduler, data position, strategy state (rank 0)
        rank_00000.pt ... per-rank RNG states (and per-rank replicas where ranks diverge)
        kelm.json         step, world size, model fingerprint and every file's size; written last
    latest                the name of the newest complete checkpoint

Each checkpoint is written to ``step_N.partial`` and renamed once every rank has finished;
only then is ``latest`` replaced (atomically), so a crash never leaves a checkpoint that loads
half. Left-over ``.partial`` folders are ignored and removed by the next save. Model and
optimizer state go through ``torch.distributed.checkpoint.state_dict``, which gives the same
keys for plain, DDP and FSDP2 models. Everything else is plain Python and tensors, stored with
``torch.save`` and read back with ``weights_only=True``.
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
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from kelm.atomic import write_text_atomic
from kelm.errors import KelmError
from kelm.train.fault import maybe_fail

LATEST = "latest"
META = "kelm.json"
STATE = "state.pt"
PARTIAL = ".partial"
FORMAT = 2


class CheckpointError(KelmError):
    """A checkpoint is missing, incomplete, corrupt, or belongs to another model."""


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """Parameter names and global shapes: a checkpoint only loads into a model with the same ones.
    A parameter that holds a shard of a larger tensor (a sharded embedding table) names the
    whole tensor's shape in ``kelm_global_shape``."""
    shapes = {}
    for name, p in model.named_parameters():
        shapes[name.replace("_checkpoint_wrapped_module.", "")] = list(getattr(p, "kelm_global_shape", p.shape))
    return {"class": type(model).__name__, "parameters": shapes}


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, as plain values and tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_").split(".")[0])


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    found = [p for p in root.glob("step_*") if p.is_dir() and PARTIAL not in p.name and (p / META).is_file()]
    return sorted(found, key=step_of)


def _rank_file(rank: int) -> str:
    return f"rank_{rank:05d}.pt"


def save_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    fingerprint: dict[str, Any],
    keep: int = 2,
    local: dict[str, Any] | None = None,
) -> Path:
    """Collective: every rank calls it. ``extra`` is rank 0's; ``local`` is saved per rank.

    Returns the checkpoint folder."""
    rank = dist.get_rank()
    final = root / f"step_{step:08d}"
    partial = root / (final.name + PARTIAL)
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"*{PARTIAL}"):
            shutil.rmtree(stale, ignore_errors=True)
        partial.mkdir()
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(partial))
    torch.save({"rng": rng_state(), "local": local}, partial / _rank_file(rank))
    if rank == 0:
        torch.save(extra, partial / STATE)
    dist.barrier()
    maybe_fail("checkpoint", step, rank)
    if rank == 0:
        files = {p.name: p.stat().st_size for p in sorted(partial.iterdir()) if p.is_file()}
        meta = {
            "format": FORMAT,
            "step": step,
            "world_size": dist.get_world_size(),
            "fingerprint": fingerprint,
            "files": files,
        }
        (partial / META).write_text(json.dumps(meta), encoding="utf-8")
        _commit(root, partial, final)
        _prune(root, final, keep)
    dist.barrier()
    return final


def _commit(root: Path, partial: Path, final: Path) -> None:
    """Rename the finished folder into place, then point ``latest`` at it."""
    old = None
    if final.exists():  # the same step saved before (a resumed run re-saving it): set it aside
        old = root / (final.name + ".old" + PARTIAL)
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    partial.rename(final)
    write_text_atomic(root / LATEST, final.name)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _prune(root: Path, current: Path, keep: int) -> None:
    """Keep ``current`` and the newest ``keep - 1`` older checkpoints; drop the rest, and any
    newer ones left by an abandoned timeline (a resume from an earlier step into this folder)."""
    step = step_of(current)
    older = [p for p in checkpoint_dirs(root) if step_of(p) < step]
    newer = [p for p in checkpoint_dirs(root) if step_of(p) > step]
    for old in older[: max(0, len(older) - (keep - 1))] + newer:
        shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(path: Path) -> Path:
    """A checkpoint folder, a run's ``checkpoints/`` folder, or a run folder → the checkpoint to load."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: it does not exist")
    if path.name.endswith(PARTIAL):
        raise CheckpointError(f"{path} is an incomplete checkpoint (its save was interrupted)")
    if (path / META).is_file() or (path / ".metadata").is_file():
        return path
    for root in (path / "checkpoints", path):
        if (root / LATEST).is_file():
            target = root / (root / LATEST).read_text(encoding="utf-8").strip()
            if target.is_dir():
                return target
            complete = checkpoint_dirs(root)
            if complete:  # `latest` lost its target (e.g. a folder deleted by hand): newest complete
                return complete[-1]
            raise CheckpointError(f"{root / LATEST} points to {target.name}, which does not exist")
        complete = checkpoint_dirs(root) if root.is_dir() else []
        if complete:
            return complete[-1]
    raise CheckpointError(f"no checkpoint found in {path}")


def read_meta(ckpt: Path) -> dict[str, Any]:
    """The checkpoint's ``kelm.json``, after checking that every file it lists is there, whole."""
    try:
        meta = json.loads((ckpt / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {ckpt} is incomplete or corrupt: {META} is missing") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: cannot read {META} ({err})") from None
    if not isinstance(meta, dict) or not {"step", "world_size", "fingerprint"} <= meta.keys():
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: {META} lacks step, world_size or fingerprint")
    files = meta.get("files") or {".metadata": None, STATE: None}
    for name, size in files.items():
        f = ckpt / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {ckpt} is corrupt: {name} is missing")
        if size is not None and f.stat().st_size != size:
            raise CheckpointError(
                f"checkpoint {ckpt} is corrupt: {name} has {f.stat().st_size} bytes, {size} were written"
            )
    try:  # DCP's own index; reading it here keeps DCP from logging its fallbacks on a bad one
        dcp.FileSystemReader(str(ckpt)).read_metadata()
    except Exception as err:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: cannot read .metadata ({_first_line(err)})") from None
    return meta


def check_compatible(ckpt: Path, meta: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """Raise unless the checkpoint was saved from a model with the same parameters and shapes."""
    saved = meta.get("fingerprint") or {}
    if saved == fingerprint:
        return
    ours, theirs = fingerprint.get("parameters", {}), saved.get("parameters", {})
    only_saved, only_ours = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
    if only_saved or only_ours:
        names = [f"{n} (only in the checkpoint)" for n in only_saved[:2]]
        names += [f"{n} (only in the model)" for n in only_ours[:2]]
        detail = "parameters differ: " + ", ".join(names)
    elif theirs != ours:
        name = next(n for n in ours if ours[n] != theirs[n])
        detail = f"{name} has shape {theirs[name]} in the checkpoint, {ours[name]} in the model"
    else:
        detail = f"model class {saved.get('class')} in the checkpoint, {fingerprint.get('class')} here"
    raise CheckpointError(f"checkpoint {ckpt} was saved from another model ({detail})")


def _torch_load(path: Path, ckpt: Path) -> Any:
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: cannot read {path.name} ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    if isinstance(err, CheckpointException) and err.failures:
        err = next(iter(err.failures.values()))[0]
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def read_extra(ckpt: Path) -> dict[str, Any]:
    """Rank 0's extra state of a checkpoint (trainer, scheduler, data position, task), without
    loading the model; the checkpoint's files are checked first (`read_meta`)."""
    read_meta(ckpt)
    return _torch_load(ckpt / STATE, ckpt)


def load_checkpoint(
    ckpt: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    fingerprint: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any] | None, int]:
    """Collective: load into ``model``/``optimizer`` at any world size.

    Returns (extra state, this rank's ``local`` state or None at another world size, saved world size).
    RNG states are restored when the world size is the one saved."""
    meta = read_meta(ckpt)
    check_compatible(ckpt, meta, fingerprint)
    extra = _torch_load(ckpt / STATE, ckpt)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        dcp.load(state, checkpoint_id=str(ckpt))
    except (Exception, CheckpointException) as err:  # CheckpointException is a BaseException
        raise CheckpointError(f"checkpoint {ckpt} is corrupt or unreadable: {_first_line(err)}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    saved_world = int(meta["world_size"])
    local = None
    rank_file = ckpt / _rank_file(dist.get_rank())
    if saved_world == dist.get_world_size() and rank_file.is_file():
        per_rank = _torch_load(rank_file, ckpt)
        set_rng_state(per_rank["rng"])
        local = per_rank.get("local")
    return extra, local, saved_world
