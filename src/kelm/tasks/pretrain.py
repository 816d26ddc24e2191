"""Pretraining a Hugging Face model on plain text: masked (``mlm``) or causal (``clm``) language modelling.

The corpus is tokenized once and cached (`kelm.lm.corpus`), packed into blocks of ``block_size``
tokens, and its last ``valid_fraction`` of blocks is held out. MLM masks ``mlm_probability`` of
the non-special tokens (80% ``[MASK]``, 10% a random token, 10% unchanged); training masks come
from the loader's per-batch generator (the same at every world size), held-out masks from each
block's index, so validation loss is comparable between evaluations. The loss is the mean over
predicted tokens and `finalize_metrics` adds perplexity, the exponential of that mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kelm.config import Section
from kelm.lm.corpus import load_corpus, split_blocks
from kelm.lm.speedups import head_at
from kelm.train.config import PRETRAIN_DEFAULTS
from kelm.train.task import Batch, Task

IGNORE = -100


class PretrainConfig(Section):
    """``[task]`` for ``mlm`` and ``clm``."""

    name: Literal["mlm", "clm"] = "mlm"
    text: list[str] = Field(default_factory=list, description="text files or folders of .txt files")
    model: str | None = Field(None, description="default tiny-bert (mlm) or tiny-gpt2 (clm); or a checkpoint")
    block_size: int = Field(128, ge=8)
    valid_fraction: float = Field(0.05, gt=0, lt=1)
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    cache_dir: str | None = Field(None, description="token cache root (default: $KELM_CACHE_DIR or ~/.cache/kelm)")
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)

    @property
    def model_name(self) -> str:
        return self.model or ("tiny-bert" if self.name == "mlm" else "tiny-gpt2")


def mask_tokens(
    ids: torch.Tensor, u: torch.Tensor, random_ids: torch.Tensor, special: torch.Tensor, mask_id: int, p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking from uniform draws ``u`` (``(B, T, 2)``) and replacement ids: inputs and labels.

    A non-special token is predicted when ``u[..., 0] < p``; of those, ``u[..., 1]`` < 0.8 become
    ``mask_id``, 0.8–0.9 a random token, the rest stay. Each row predicts at least one token."""
    chosen = (u[..., 0] < p) & ~special
    none = ~chosen.any(1) & (~special).any(1)
    if bool(none.any()):  # a row with nothing chosen predicts its lowest-draw ordinary token
        first = torch.where(special, 2.0, u[..., 0]).argmin(1)
        chosen[none, first[none]] = True
    labels = torch.where(chosen, ids, IGNORE)
    inputs = ids.clone()
    inputs[chosen & (u[..., 1] < 0.8)] = mask_id
    swap = chosen & (u[..., 1] >= 0.8) & (u[..., 1] < 0.9)
    inputs[swap] = random_ids[swap]
    return inputs, labels


class PretrainTask(Task):
    config_class = PretrainConfig
    uses_batch_random = True
    monitor = "loss"
    monitor_mode = "min"
    train_defaults = PRETRAIN_DEFAULTS

    def __init__(self, cfg: PretrainConfig):
        from kelm.lm.hf import load_tokenizer

        self.cfg = cfg
        self.name = cfg.name
        self.tokenizer = load_tokenizer(cfg.model_name)
        if cfg.name == "mlm" and self.tokenizer.mask_token_id is None:
            from kelm.errors import ConfigError

            raise ConfigError(f"task.model: '{cfg.model_name}' has no mask token; use clm")
        self.stream = load_corpus(cfg.text, self.tokenizer, cfg.cache_dir)
        self._train, self._valid = split_blocks(self.stream, cfg.block_size, cfg.valid_fraction)
        self._special = torch.zeros(len(self.tokenizer), dtype=torch.bool)
        self._special[[i for i in self.tokenizer.all_special_ids if i < len(self._special)]] = True
        self._hf_config: Any = None

    # -- model ----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from kelm.lm.hf import build_hf_model

        c = self.cfg
        sizes = {"hidden_size": c.hidden_size, "num_layers": c.num_layers, "num_heads": c.num_heads}
        model = build_hf_model(c.model_name, c.name, self.tokenizer, None, sizes, max(c.block_size, 64))
        self._hf_config = model.config
        return model

    def model_config(self) -> dict[str, Any]:
        spec = {"kind": "hf", "head": self.cfg.name, "base": self.cfg.model_name, "max_length": self.cfg.block_size}
        return {"task": self.name, "model": spec}

    def save_artifacts(self, folder: Path) -> None:
        from kelm.lm.hf import save_pretrained_files

        if self._hf_config is not None:
            save_pretrained_files(folder, self._hf_config, self.tokenizer)

    # -- data -----------------------------------------------------------------------------------
    def train_data(self) -> Sequence[Any]:
        return self._train

    def eval_data(self) -> Sequence[Any]:
        return self._valid

    def collate(self, samples: list[Any], rng: Any = None) -> Batch:
        idx = [i for i, _ in samples]
        ids = torch.stack([b for _, b in samples])
        if self.cfg.name == "clm":
            return {"input_ids": ids}
        B, T = ids.shape
        V = len(self.tokenizer)
        if rng is not None:  # training: the loader's generator for this global batch
            u, random_ids = rng.rand(T, 2), rng.randint(V, T)
        else:  # held out: fixed per block
            gens = [torch.Generator().manual_seed(1_000_003 * (k + 1)) for k in idx]
            u = torch.stack([torch.rand(T, 2, generator=g) for g in gens])
            random_ids = torch.stack([torch.randint(V, (T,), generator=g) for g in gens])
        inputs, labels = mask_tokens(
            ids, u, random_ids, self._special[ids], self.tokenizer.mask_token_id, self.cfg.mlm_probability
        )
        return {"input_ids": inputs, "labels": labels}

    def batch_weight(self, batch: Batch) -> int:
        """Predicted tokens: masked ones (MLM) or every next token (CLM)."""
        if "labels" in batch:
            return int((batch["labels"] != IGNORE).sum())
        ids = batch["input_ids"]
        return ids.shape[0] * (ids.shape[1] - 1)

    def tokens(self, batch: Batch) -> int:
        return batch["input_ids"].numel()

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        ids = batch["input_ids"]
        if self.cfg.name == "clm":
            logits = model(input_ids=ids).logits
            return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()), {}
        labels = batch["labels"]
        keep = labels != IGNORE
        with head_at(model, keep) as selected:  # the vocabulary projection only where a token is predicted
            logits = model(input_ids=ids).logits
        return F.cross_entropy((logits if selected else logits[keep]).float(), labels[keep]), {}

    def finalize_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        return {**metrics, "perplexity": math.exp(min(metrics["loss"], 50.0))}


__all__ = ["PretrainConfig", "PretrainTask", "mask_tokens"]
