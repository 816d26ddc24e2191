"""The final model for inference: ``model.safetensors`` plus ``config.toml``, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from kelm.artifacts import CONFIG, WEIGHTS, write_toml
from kelm.atomic import atomic_path


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Collective: the unsharded, unwrapped state dict on CPU (complete on rank 0)."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    sd = get_model_state_dict(model, options=opts)
    return {k.replace("_checkpoint_wrapped_module.", ""): v for k, v in sd.items()}


def distinct_tensors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous copies of ``sd``, each storage once (tied weights under their first name)."""
    seen: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        if t.numel() and t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        tensors[name] = t.detach().contiguous().clone()
    return tensors


def export_model(out_dir: Path, model: nn.Module, config: dict[str, Any]) -> Path | None:
    """Collective; rank 0 writes the files. Tied weights are stored once per distinct tensor."""
    sd = full_state_dict(model)
    if dist.get_rank() != 0:
        return None
    tensors = distinct_tensors(sd)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    write_toml(out_dir / CONFIG, config)
    return out_dir / WEIGHTS


def load_weights(model: nn.Module, folder: Path) -> nn.Module:
    """Load exported weights (strict apart from tied duplicates)."""
    missing, unexpected = model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=False)
    tied = {n for n, _ in model.named_parameters(remove_duplicate=True)}
    really_missing = [m for m in missing if m in tied]
    if really_missing or unexpected:
        raise ValueError(f"weights do not match the model: missing {really_missing}, unexpected {unexpected}")
    return model
