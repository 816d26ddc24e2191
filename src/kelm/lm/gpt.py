"""A small GPT-2-style decoder: pre-norm blocks, causal self-attention, tied embeddings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    vocab_size: int = 256
    seq_len: int = 128
    d_model: int = 128
    n_layer: int = 2
    n_head: int = 4
    dropout: float = 0.0
    #: Sparse FFNs: `kelm.moe.MoEConfig` settings (without d_model) for every block; None = dense.
    moe: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.d_model % cfg.n_head:
            raise ValueError(f"d_model ({cfg.d_model}) must be divisible by n_head ({cfg.n_head})")
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        q, k, v = self.qkv(x_BTD).split(D, dim=-1)
        # (B, H, T, D/H)
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp: nn.Module
        if cfg.moe:
            from kelm.moe import MoEConfig, MoELayer

            self.mlp = MoELayer(MoEConfig.from_dict({**cfg.moe, "d_model": cfg.d_model}))
        else:
            self.mlp = nn.Sequential(
                nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model)
            )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, domain_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        h = self.ln2(x)
        return x + self.drop(self.mlp(h, domain_ids) if domain_ids is not None else self.mlp(h))


class GPT(nn.Module):
    """Token ids ``(B, T)`` → logits ``(B, T, V)``. With MoE blocks, ``domain_ids`` ``(B, T)`` (KG
    domain per token, -1 for none) feed knowledge-guided routing (`kelm.moe.domains`)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if getattr(m, "keep_init", False):  # drawn by its owner (MoE domain embeddings)
            return
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, ids_BT: torch.Tensor, domain_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = ids_BT.shape[1]
        x = self.tok(ids_BT) + self.pos(torch.arange(T, device=ids_BT.device))
        for block in self.blocks:
            x = block(x) if domain_ids is None else block(x, domain_ids)
        # Output projection tied to the token embedding.
        return self.ln_f(x) @ self.tok.weight.t()


def load_gpt(path: str | Path) -> GPT:
    """Rebuild an exported GPT (a run folder or its ``model/``) and load its weights."""
    from kelm.artifacts import read_model_spec
    from kelm.train.export import load_weights

    folder, spec = read_model_spec(path, "gpt")
    spec.pop("kind")
    return load_weights(GPT(GPTConfig(**spec)), folder)
