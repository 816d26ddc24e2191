"""Fine-tuning trains only the vocabulary rows the data can reach (an exact speed-up).

A BERT vocabulary has ~30,000 rows; a fine-tuning set uses a few thousand. With no weight decay,
a row whose gradient is always zero never moves under Adam, AdamW, SGD or Adagrad (its moments stay
zero, so its update is exactly zero). `compact_vocabulary` therefore swaps a model's input embedding
for a `CompactEmbedding` whose trainable table holds only the rows of the ids the task will ever
feed it (every split, plus the tokenizer's special tokens). The optimizer step, gradient clipping,
gradient zeroing and the DDP all-reduce then touch those rows alone: for MiniLM that is half the
model's parameters gone from every per-step pass over the weights.

The swap is invisible from outside training: the module's ``state_dict`` holds the full-size table
under the original key (the untouched rows as they were loaded), and ``load_state_dict`` takes a
full-size table back, so checkpoints, early-stopping snapshots and the exported model are those of
the full model. Feeding an id outside the kept set during training is an error, not a silent miss.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kelm.lm.speedups import DenseGradBuffer, parameter_uses


class CompactEmbedding(nn.Module):
    """An ``nn.Embedding`` stand-in that trains the rows ``keep`` of its table and holds the rest fixed.

    ``weight`` is the ``(len(keep), dim)`` trainable part; ``state_dict`` expands it into the full
    ``(vocab, dim)`` table. With ``sparse_grads`` the backward pass writes only the rows a batch
    uses, into one dense buffer reused across steps (see `kelm.lm.speedups`)."""

    def __init__(self, embedding: nn.Embedding, keep: torch.Tensor, sparse_grads: bool = True):
        super().__init__()
        full = embedding.weight.detach()
        vocab = full.shape[0]
        keep = torch.unique(keep.to(torch.int64).cpu())
        if keep.numel() == 0 or int(keep[0]) < 0 or int(keep[-1]) >= vocab:
            raise ValueError(f"kept ids must lie in [0, {vocab}); got {keep.numel()} ids")
        self.num_embeddings, self.embedding_dim = vocab, full.shape[1]
        self.norm_type, self.scale_grad_by_freq = embedding.norm_type, embedding.scale_grad_by_freq
        # plain attributes, not buffers: DDP would otherwise broadcast them before every forward pass
        self.rows = keep.to(full.device)
        self.position = torch.full((vocab,), -1, dtype=torch.int64, device=full.device)
        self.position[self.rows] = torch.arange(keep.numel(), device=full.device)
        self.frozen = full.clone()  # the full table; rows in ``keep`` are overwritten on expansion
        self.weight = nn.Parameter(full[self.rows].clone(), requires_grad=embedding.weight.requires_grad)
        pad = embedding.padding_idx
        self.padding_idx = int(self.position[pad]) if pad is not None and int(self.position[pad]) >= 0 else None
        self.sparse_grads = sparse_grads
        if sparse_grads and self.weight.requires_grad:
            self.weight.register_post_accumulate_grad_hook(DenseGradBuffer())
        self.register_state_dict_post_hook(_expand_in_state_dict)
        self.register_load_state_dict_pre_hook(_compact_from_state_dict)

    def compact_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Positions of ``ids`` in the trainable table (an error for ids that were not kept)."""
        if self.position.device != ids.device:
            self.position, self.rows = self.position.to(ids.device), self.rows.to(ids.device)
        pos = self.position[ids]
        if bool((pos < 0).any()):
            missing = sorted(set(ids[pos < 0].tolist()))[:10]
            raise ValueError(f"token ids {missing} are not in the compacted vocabulary (task.compact_vocab)")
        return pos

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        sparse = self.sparse_grads and self.weight.requires_grad and torch.is_grad_enabled()
        return F.embedding(
            self.compact_ids(ids), self.weight, self.padding_idx, None, self.norm_type, self.scale_grad_by_freq, sparse
        )

    def full_weight(self) -> torch.Tensor:
        """The full ``(vocab, dim)`` table with the trained rows in place (a new tensor)."""
        full = self.frozen.to(device=self.weight.device, dtype=self.weight.dtype, copy=True)
        full[self.rows.to(full.device)] = self.weight.detach()
        return full

    def load_full_weight(self, full: torch.Tensor) -> None:
        """Set the table from a full ``(vocab, dim)`` tensor, keeping the trainable ``Parameter``."""
        if tuple(full.shape) != (self.num_embeddings, self.embedding_dim):
            raise ValueError(
                f"embedding table of shape {tuple(full.shape)} does not fit a "
                f"({self.num_embeddings}, {self.embedding_dim}) vocabulary"
            )
        with torch.no_grad():
            self.frozen = full.detach().to(self.frozen.device, self.frozen.dtype, copy=True)
            self.weight.copy_(full.detach()[self.rows.to(full.device)])

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, trained rows={self.rows.numel()}"


def _expand_in_state_dict(module: CompactEmbedding, state: dict[str, Any], prefix: str, _meta: Any) -> None:
    key = prefix + "weight"
    if key in state:
        state[key] = module.full_weight()


def _compact_from_state_dict(
    module: CompactEmbedding,
    state: dict[str, Any],
    prefix: str,
    _meta: Any,
    _strict: bool,
    _missing: list[str],
    _unexpected: list[str],
    errors: list[str],
) -> None:
    key = prefix + "weight"
    table = state.get(key)
    if table is None or tuple(table.shape) == tuple(module.weight.shape):
        return
    try:
        module.load_full_weight(table)
    except ValueError as err:
        errors.append(f"{key}: {err}")
        return
    state[key] = module.weight.detach()  # the regular load then copies it onto itself


def compact_vocabulary(model: nn.Module, ids: Iterable[int] | torch.Tensor, sparse_grads: bool = True) -> bool:
    """Swap ``model``'s input embedding (``get_input_embeddings``) for a `CompactEmbedding` over
    ``ids``. Returns False, changing nothing, when the model has none or its table is shared with
    another module (tied to an output layer), since then every row gets a gradient."""
    get, set_ = getattr(model, "get_input_embeddings", None), getattr(model, "set_input_embeddings", None)
    embedding = get() if callable(get) else None
    if not isinstance(embedding, nn.Embedding) or not callable(set_) or embedding.max_norm is not None:
        return False
    if not embedding.weight.requires_grad or embedding.sparse:
        return False
    if parameter_uses(model)[id(embedding.weight)] > 1:
        return False  # tied
    keep = ids if isinstance(ids, torch.Tensor) else torch.tensor(list(ids), dtype=torch.int64)
    set_(CompactEmbedding(embedding, keep, sparse_grads))
    return True


__all__ = ["CompactEmbedding", "compact_vocabulary"]
