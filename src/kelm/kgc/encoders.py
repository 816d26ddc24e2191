"""The bi-encoder of text-based KG completion: one transformer, mean pooling, L2 normalisation.

Queries ("head: description [SEP] relation") and candidates ("entity: description") go through
the same encoder (SimKGC uses two copies; sharing halves the parameters and lets a KEPLER-style
MLM loss train the one encoder both sides use). With ``kepler`` the encoder is the base of an
``AutoModelForMaskedLM``, so the MLM head shares every encoder weight.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kelm.errors import ConfigError

#: The temperature is clamped to this range (SimKGC caps 1/τ at 100).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 1.0
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def mean_pool(hidden_BTD: Tensor, mask_BT: Tensor) -> Tensor:
    """L2-normalised mean of the hidden states over non-padding positions."""
    m = mask_BT.unsqueeze(-1).to(hidden_BTD.dtype)
    summed = (hidden_BTD * m).sum(1) / m.sum(1).clamp(min=1.0)
    return F.normalize(summed.float(), dim=-1)


def _drop_pooler(model: nn.Module) -> nn.Module:
    """Mean pooling never uses the CLS pooler; unused weights would stall DDP, so remove it."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def build_encoder(name: str, tokenizer: Any, sizes: dict[str, int], max_positions: int, kepler: bool) -> nn.Module:
    """``AutoModel`` (or, with ``kepler``, ``AutoModelForMaskedLM``) for ``name``: ``minilm``, a
    checkpoint folder, a cached hub id, or ``tiny-bert`` built fresh from ``sizes``."""
    from transformers import AutoConfig, AutoModel

    from kelm.lm.hf import build_hf_model, quiet, resolve_model, scratch_config

    if name == "tiny-gpt2":
        raise ConfigError("task.model: text-kgc needs an encoder (minilm, tiny-bert or a BERT-like checkpoint)")
    if kepler:
        return build_hf_model(name, "mlm", tokenizer, sizes=sizes, max_positions=max_positions)
    with quiet():
        if name == "tiny-bert":
            return _drop_pooler(AutoModel.from_config(scratch_config(name, tokenizer, sizes, max_positions)))
        source = resolve_model(name)
        try:
            if torch.get_default_device().type == "meta":
                return _drop_pooler(AutoModel.from_config(AutoConfig.from_pretrained(source)))
            return _drop_pooler(AutoModel.from_pretrained(source, use_safetensors=True))
        except (OSError, ValueError) as err:
            raise ConfigError(f"task.model: cannot load encoder '{name}' ({str(err).strip()[:200]})") from None


def encoder_from_config(config: Any, kepler: bool) -> nn.Module:
    """An encoder of the same shape as a saved one (weights are loaded afterwards)."""
    from transformers import AutoModel, AutoModelForMaskedLM

    from kelm.lm.hf import quiet

    with quiet():
        if kepler:
            return AutoModelForMaskedLM.from_config(config)
        return _drop_pooler(AutoModel.from_config(config))


class BiEncoder(nn.Module):
    """Encoder + learnable temperature (+ KEPLER relation table). Every use goes through ``forward``
    so DDP sees one forward pass per step.

    ``forward("encode", input_ids=…, attention_mask=…)`` → ``(B, D)`` unit vectors.
    ``forward("train", **batch)`` → a dict with ``query`` (from ``q_*`` inputs), ``cands`` (from
    ``c_*``), ``temperature``, and with ``kepler`` ``mlm_loss`` (``m_*`` inputs, ``m_labels``)
    and ``relations`` (the TransE relation table).
    """

    def __init__(self, encoder: nn.Module, kepler: bool, num_relations: int = 0, init_temperature: float = 0.05):
        super().__init__()
        self.kepler = kepler
        if kepler:
            self.mlm = encoder
        else:
            self.encoder = encoder
        self.log_temperature = nn.Parameter(torch.tensor(math.log(init_temperature)))
        if kepler:
            dim = self.base.config.hidden_size
            self.relations = nn.Embedding(max(num_relations, 1), dim)
            nn.init.normal_(self.relations.weight, std=0.1 / math.sqrt(dim))

    @property
    def base(self) -> nn.Module:
        return self.mlm.base_model if self.kepler else self.encoder

    def temperature(self) -> Tensor:
        lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
        return self.log_temperature.clamp(lo, hi).exp()

    def encode(self, **inputs: Tensor) -> Tensor:
        kwargs = {k: v for k, v in inputs.items() if k in INPUTS}
        out = self.base(**kwargs)
        return mean_pool(out.last_hidden_state, kwargs["attention_mask"])

    def forward(self, op: str, **batch: Any) -> Any:
        if op == "encode":
            return self.encode(**batch)
        if op != "train":
            raise ValueError(f"unknown op {op!r}")
        pick = lambda p: {k: batch[p + k] for k in INPUTS if p + k in batch}  # noqa: E731
        out = {
            "query": self.encode(**pick("q_")),
            "cands": self.encode(**pick("c_")),
            "temperature": self.temperature(),
        }
        if self.kepler:
            mlm_out = self.mlm(**pick("m_"), labels=batch["m_labels"])
            out["mlm_loss"] = mlm_out.loss
            out["relations"] = self.relations.weight
        return out


__all__ = ["BiEncoder", "build_encoder", "encoder_from_config", "mean_pool"]
