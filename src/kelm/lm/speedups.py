"""Exact speed-ups for fine-tuning Hugging Face encoders on the CPU (the results do not change).

- `row_sparse_embedding_grads`: an embedding's backward pass writes only the rows a batch uses.
  PyTorch's dense embedding backward allocates a fresh ``vocab x dim`` zero tensor every step
  (47 MB for a BERT vocabulary, mapped and zeroed page by page) and scatters into it. Here the
  embedding returns a sparse gradient, which a hook adds into one dense buffer kept across steps
  (zeroed in place), so the optimizer, gradient clipping and DDP still see the same dense
  gradient. Under a wrapper that swaps the module's parameters (FSDP) the dense path is kept.
- `first_token_last_layer`: for heads that read only the first position (sequence
  classification on ``[CLS]``), the last encoder layer computes its queries, attention output
  and feed-forward block at that position alone; keys and values still come from every position.
  The logits are those of the full model, and in training each dropout keeps the mask the full
  layer would draw, so a run is the full model's run; the last hidden state has length 1.
- `short_row_attention`: PyTorch's CPU softmax is several times slower on rows shorter than 16
  (a 12-token batch: 0.73 ms per layer for forward and backward, against 0.13 ms at 16 tokens;
  `bench/cpu_kernels.py`).
  For such batches the attention scores are padded with ``-inf`` to 16 columns before the softmax
  and cut back after it; the probabilities, the dropout draw and the output are those of
  PyTorch's attention, and longer batches go to PyTorch's ``scaled_dot_product_attention``.
- `head_at`: a masked-LM head (``cls`` / ``lm_head``) applied only at the predicted positions,
  so the vocabulary projection runs on the ~15% masked tokens instead of every token.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kelm.train.sparse_grads import DenseGradBuffer, parameter_uses, row_sparse_embedding_grads

#: Model types whose sequence-classification head reads the first position only.
FIRST_TOKEN_HEADS = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})


def first_token_last_layer(model: nn.Module) -> bool:
    """Let the last encoder layer of a BERT-like sequence classifier compute only what the head
    reads (position 0). Returns False, changing nothing, for models it does not recognise."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in FIRST_TOKEN_HEADS:
        return False
    if getattr(config, "is_decoder", False) or getattr(config, "position_embedding_type", "absolute") != "absolute":
        return False
    if getattr(config, "_attn_implementation", "eager") not in ("eager", "sdpa", SHORT_ROW_ATTENTION):
        return False
    encoder = getattr(getattr(model, "base_model", None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList) or not layers:
        return False
    last = layers[-1]
    attention = getattr(last, "attention", None)
    needed = ("query", "key", "value", "num_attention_heads", "attention_head_size")
    if attention is None or not all(hasattr(attention.self, n) for n in needed):
        return False
    blocks = (getattr(attention, "output", None), getattr(last, "output", None))
    if not hasattr(last, "intermediate") or not all(
        isinstance(getattr(b, n, None), nn.Module) for b in blocks for n in ("dense", "dropout", "LayerNorm")
    ):
        return False
    last.forward = types.MethodType(_first_token_forward, last)
    return True


def _first_token_forward(
    self: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args: Any, **kwargs: Any
) -> torch.Tensor:
    """A BERT layer's forward for the first position only: ``(B, T, D)`` in, ``(B, 1, D)`` out.

    In training, each dropout draws its mask at the full layer's shape and keeps the first
    position's part, so the random stream, and hence the whole run, is the full model's."""
    sa, so, out = self.attention.self, self.attention.output, self.output
    batch, length, width = hidden_states.shape
    heads, size = sa.num_attention_heads, sa.attention_head_size
    first = hidden_states[:, :1]
    q = sa.query(first).view(batch, 1, heads, size).transpose(1, 2)
    k = sa.key(hidden_states).view(batch, length, heads, size).transpose(1, 2)
    v = sa.value(hidden_states).view(batch, length, heads, size).transpose(1, 2)
    mask = attention_mask
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, :1, :]  # the first query's row (boolean keep-mask or additive float mask)
    scale = getattr(sa, "scaling", size**-0.5)
    p_attn = sa.dropout.p if self.training and hasattr(sa, "dropout") else 0.0
    if p_attn > 0:
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        probs = _first_row_dropout(softmax_last(scores), p_attn, (batch, heads, length, length))
        context = torch.matmul(probs, v)
    else:
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    context = context.transpose(1, 2).reshape(batch, 1, heads * size)
    full = (batch, length, width)
    h = _first_row_dropout(so.dense(context), so.dropout.p if self.training else 0.0, full)
    attention_output = so.LayerNorm(h + first)
    h = out.dense(self.intermediate(attention_output))
    h = _first_row_dropout(h, out.dropout.p if self.training else 0.0, full)
    return out.LayerNorm(h + attention_output)


def _first_row_dropout(x: torch.Tensor, p: float, full: tuple[int, ...]) -> torch.Tensor:
    """Dropout on ``x``, the first row (dim -2) of a tensor of shape ``full``, with the mask the
    full tensor would draw (same shape, same generator calls), cut to that row."""
    if p <= 0:
        return x
    keep = torch.empty(full, dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    return x * keep[..., :1, :].div_(1 - p)


#: Name under which `short_row_attention` is registered with Hugging Face's attention interface.
SHORT_ROW_ATTENTION = "kelm_short_rows"
#: Softmax rows shorter than this take PyTorch's slow path on the CPU.
SHORT_ROW = 16


def short_row_attention(model: nn.Module) -> bool:
    """Give a Hugging Face model that uses SDPA attention `attention_short_rows` instead (under the
    name `SHORT_ROW_ATTENTION`, with SDPA's masks). Returns False, changing nothing, otherwise."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SHORT_ROW_ATTENTION, attention_short_rows)
    AttentionMaskInterface.register(SHORT_ROW_ATTENTION, sdpa_mask)
    model.set_attn_implementation(SHORT_ROW_ATTENTION)
    return True


def attention_short_rows(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Hugging Face attention function: SDPA, except that on the CPU, for keys shorter than
    `SHORT_ROW`, the softmax runs on scores padded with ``-inf`` to `SHORT_ROW` columns.
    ``(B, H, T, d)`` in, ``(B, T, H, d)`` out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    length = key.shape[-2]
    causal = kwargs.get("is_causal") or getattr(module, "is_causal", False)
    if query.device.type != "cpu" or length >= SHORT_ROW or key.shape[1] != query.shape[1] or causal:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask
    probs = F.dropout(softmax_last(scores), dropout, training=dropout > 0)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def softmax_last(scores: torch.Tensor) -> torch.Tensor:
    """``scores.softmax(-1)``; on the CPU, rows shorter than `SHORT_ROW` are padded with ``-inf``
    for the softmax (same probabilities, the fast kernel)."""
    length = scores.shape[-1]
    if scores.device.type != "cpu" or length >= SHORT_ROW:
        return scores.softmax(-1)
    return F.pad(scores, (0, SHORT_ROW - length), value=float("-inf")).softmax(-1)[..., :length]


def lm_head(model: nn.Module) -> nn.Module | None:
    """The output head of a Hugging Face masked-LM model (through a DDP wrapper), if it has one."""
    inner = getattr(model, "module", model)
    for name in ("cls", "lm_head"):
        head = getattr(inner, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


@contextlib.contextmanager
def head_at(model: nn.Module, keep: torch.Tensor) -> Iterator[bool]:
    """Within the block, the model's LM head sees only the hidden states where ``keep`` (``(B, T)``)
    is true, so ``logits`` come out as ``(N, vocab)`` for those N positions. Yields False, changing
    nothing, for a model without a recognised head (its logits stay ``(B, T, vocab)``)."""
    head = lm_head(model)
    if head is None:
        yield False
        return

    def select(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0][keep], *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield True
    finally:
        handle.remove()


__all__ = [
    "FIRST_TOKEN_HEADS",
    "DenseGradBuffer",
    "first_token_last_layer",
    "head_at",
    "lm_head",
    "parameter_uses",
    "row_sparse_embedding_grads",
    "short_row_attention",
    "softmax_last",
]
