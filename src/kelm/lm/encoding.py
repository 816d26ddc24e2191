"""Texts through Hugging Face encoders: token ids for a tokenizer (the samples every text task
batches), bare encoders by name, and frozen mean-pooled text embeddings (`Embedder`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kelm.lm.batching import encode_inputs

#: Texts → ``(len(texts), D)`` embeddings.
Embedder = Callable[[list[str]], torch.Tensor]


def encode_texts(tokenizer: Any, texts: list[str], max_length: int) -> tuple[list[dict[str, Any]], int]:
    """Token ids (with special tokens) per text, cut to ``max_length``; and how many were cut."""
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    samples, cut = [], 0
    for i in range(len(texts)):
        sample: dict[str, Any] = {"input_ids": enc["input_ids"][i]}
        if "token_type_ids" in enc:
            sample["token_type_ids"] = enc["token_type_ids"][i]
        cut += bool(enc.encodings[i].overflowing)
        samples.append(sample)
    return samples, cut


def load_encoder(name: str, tokenizer: Any, sizes: dict[str, int], max_positions: int = 512) -> nn.Module:
    """A bare encoder (no head): pretrained weights for a checkpoint, fresh ones for ``tiny-bert``."""
    from transformers import AutoConfig, AutoModel, BertModel

    from kelm.errors import ConfigError
    from kelm.lm.hf import _first_line, quiet, resolve_model, scratch_config

    with quiet():
        if name == "tiny-bert":
            return BertModel(scratch_config(name, tokenizer, sizes, max_positions), add_pooling_layer=False)
        if name == "tiny-gpt2":
            raise ConfigError("task.encoder: question answering needs an encoder (minilm, tiny-bert or a folder)")
        source = resolve_model(name)
        try:
            if torch.get_default_device().type == "meta":
                return AutoModel.from_config(AutoConfig.from_pretrained(source))
            return AutoModel.from_pretrained(source, use_safetensors=True)
        except (OSError, ValueError) as err:
            raise ConfigError(f"task.encoder: cannot load '{name}' ({_first_line(err)})") from None


def reference_encoder(name: str, tokenizer: Any, sizes: dict[str, int]) -> nn.Module:
    """A frozen encoder whose weights depend only on ``name`` (tiny-bert is drawn from seed 0)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        enc = load_encoder(name, tokenizer, sizes)
    return enc.eval().requires_grad_(False)


def mean_pool(encoder: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    hidden = encoder(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


@torch.no_grad()
def embed_texts(encoder: nn.Module, tokenizer: Any, texts: list[str], max_length: int, batch: int = 128):
    """Mean-pooled embeddings of ``texts`` (float32, on CPU)."""
    samples, _ = encode_texts(tokenizer, texts, max_length)
    out = [torch.zeros(0, encoder.config.hidden_size)]
    for lo in range(0, len(samples), batch):
        inputs = encode_inputs(samples[lo : lo + batch], tokenizer.pad_token_id)
        out.append(mean_pool(encoder, inputs).float())
    return torch.cat(out)


def text_embedder(encoder: Any, tokenizer: Any, max_length: int = 64, batch: int = 128) -> Embedder:
    """Mean-pooled, L2-normalised embeddings from a Hugging Face encoder (no gradients)."""

    def embed(texts: list[str]) -> torch.Tensor:
        return F.normalize(embed_texts(encoder, tokenizer, texts, max_length, batch), dim=-1)

    return embed


def load_text_embedder(name: str = "minilm", max_length: int = 64) -> tuple[Embedder, int]:
    """A frozen encoder by name (``minilm``, ``tiny-bert`` (seed 0), a folder) as an `Embedder`, and its width."""
    from kelm.lm.hf import load_tokenizer

    tokenizer = load_tokenizer(name)
    sizes = {"hidden_size": 32, "num_layers": 2, "num_heads": 2}
    encoder = reference_encoder(name, tokenizer, sizes)
    return text_embedder(encoder, tokenizer, max_length), int(encoder.config.hidden_size)
