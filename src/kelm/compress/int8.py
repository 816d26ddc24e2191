"""int8 weights: per-row symmetric storage on disk, and an int8 runtime for linear layers.

On disk every 2-D weight of a ``Linear`` or ``Embedding`` becomes int8 rows with one fp32 scale
per row (``q = round(w / s)``, ``s = max|w_row| / 127``), so the file is about a quarter of fp32.
Loading dequantizes (``w = q * s``) and then hands the linear layers to a runtime:

- ``torch``: ``torch.ao.quantization.quantize_dynamic`` (fbgemm int8 GEMMs, activations quantized
  per batch);
- ``torchao``: ``quantize_`` with ``Int8DynamicActivationInt8WeightConfig`` (scheme ``dynamic``)
  or ``Int8WeightOnlyConfig`` (scheme ``weight-only``);
- ``none``: int8 on disk only, float compute (KGE tables, whose lookups gain nothing from int8).

Requantizing ``q * s`` per row gives back ``q`` (its largest entry is exactly ``±127 s``), so the
runtime computes with the stored integers. Embeddings stay dequantized in memory.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kelm.atomic import atomic_path
from kelm.errors import ConfigError, DataError, MissingDependencyError

INT8_WEIGHTS = "model.int8.safetensors"
SCALE = ".int8_scale"
FORMAT = "int8-rows"
BACKENDS = ("torch", "torchao", "none")
SCHEMES = ("dynamic", "weight-only")
Backend = Literal["torch", "torchao", "none"]
Scheme = Literal["dynamic", "weight-only"]


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 rows and their fp32 scales: ``weight ≈ q * scale[:, None]``."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


def quantizable(model: nn.Module) -> set[str]:
    """State-dict names of the weights stored as int8: those of every Linear and Embedding."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Embedding) and module.weight.dim() == 2:
            names.add(f"{prefix}.weight" if prefix else "weight")
    return names


def int8_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of ``INT8_WEIGHTS``: int8 rows plus ``NAME.int8_scale`` for each quantizable
    weight, everything else as it is (tied tensors once)."""
    from kelm.train.export import distinct_tensors

    targets = quantizable(model)
    out: dict[str, torch.Tensor] = {}
    for name, t in distinct_tensors(model.state_dict()).items():
        if name in targets and t.is_floating_point():
            out[name], out[name + SCALE] = quantize_rows(t)
        else:
            out[name] = t
    return out


def save_int8(model: nn.Module, folder: Path) -> Path:
    """Write ``folder/INT8_WEIGHTS`` atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / INT8_WEIGHTS
    with atomic_path(path) as tmp:
        save_file(int8_state(model), str(tmp))
    return path


def dequantized_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp32 state dict of the tensors `int8_state` wrote."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith(SCALE):
            continue
        scale = tensors.get(name + SCALE)
        out[name] = dequantize_rows(t, scale) if scale is not None else t
    return out


def load_int8_weights(model: nn.Module, folder: Path) -> nn.Module:
    """Load ``folder/INT8_WEIGHTS`` into ``model`` (fp32, before `apply_runtime`)."""
    path = folder / INT8_WEIGHTS
    if not path.is_file():
        raise DataError(f"missing {INT8_WEIGHTS}", folder)
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise DataError(f"cannot read int8 weights ({err})", path) from None
    missing, unexpected = model.load_state_dict(dequantized_state(tensors), strict=False)
    tied = {n for n, _ in model.named_parameters(remove_duplicate=True)}
    if [m for m in missing if m in tied] or unexpected:
        raise DataError(f"int8 weights do not match the model (missing {missing}, unexpected {unexpected})", path)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


@contextlib.contextmanager
def _quiet_torchao() -> Iterator[None]:
    """torchao logs the optional kernels it cannot load on this machine; none are needed here."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def _skip(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


def apply_runtime(
    model: nn.Module, backend: Backend, scheme: Scheme = "dynamic", skip: tuple[str, ...] = ()
) -> nn.Module:
    """Swap the linear layers of ``model`` (eval mode, in place) for int8 ones; modules named in
    ``skip`` (and their children) stay fp32, e.g. a small output head."""
    if backend not in BACKENDS:
        raise ConfigError(f"int8 backend must be one of {', '.join(BACKENDS)}, not '{backend}'")
    if scheme not in SCHEMES:
        raise ConfigError(f"int8 scheme must be one of {', '.join(SCHEMES)}, not '{scheme}'")
    model.eval()
    if backend == "none":
        return model
    if backend == "torch":
        if scheme != "dynamic":
            raise ConfigError("backend 'torch' has the 'dynamic' scheme only (weight-only int8 needs torchao)")
        return _torch_dynamic(model, skip)
    try:
        with _quiet_torchao():
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise MissingDependencyError("int8 backend 'torchao' needs torchao: pip install 'torchao>=0.18'") from None
    config = Int8DynamicActivationInt8WeightConfig() if scheme == "dynamic" else Int8WeightOnlyConfig()
    with _quiet_torchao():
        quantize_(model, config, filter_fn=lambda m, name: isinstance(m, nn.Linear) and not _skip(name, skip))
    return model


def _torch_dynamic(model: nn.Module, skip: tuple[str, ...]) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic

    targets = {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not _skip(name, skip)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch marks its quantized tensor types as deprecated
        return quantize_dynamic(model, targets, dtype=torch.qint8, inplace=True)


def is_quantized(model: nn.Module) -> bool:
    """True if any layer of ``model`` computes in int8 (such a model cannot be trained)."""
    for m in model.modules():
        kind = type(m).__module__
        if kind.startswith("torch.ao.nn.quantized") or kind.startswith("torch.nn.quantized"):
            return True
        weight = getattr(m, "weight", None)
        if isinstance(weight, torch.Tensor) and type(weight).__module__.startswith("torchao"):
            return True
    return False


def runtime_spec(spec: dict[str, Any]) -> tuple[Backend, Scheme, tuple[str, ...]] | None:
    """The runtime a ``[model] quantization`` table asks for, or None for a float model."""
    q = spec.get("quantization")
    if not isinstance(q, dict):
        return None
    return q.get("backend", "torch"), q.get("scheme", "dynamic"), tuple(q.get("skip", ()))


__all__ = [
    "BACKENDS",
    "FORMAT",
    "INT8_WEIGHTS",
    "SCHEMES",
    "apply_runtime",
    "dequantize_rows",
    "int8_state",
    "is_quantized",
    "load_int8_weights",
    "quantizable",
    "quantize_rows",
    "runtime_spec",
    "save_int8",
]
