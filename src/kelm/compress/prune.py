"""Pruning of BERT-style encoders: unstructured magnitude pruning, and structured pruning of
attention heads and FFN units by first-order (Taylor) importance.

A BERT-style layer has ``attention.self.{query,key,value}``, ``attention.output.dense``,
``intermediate.dense`` and ``output.dense`` (BERT, RoBERTa, MiniLM, ELECTRA). Structured pruning
slices those linears, so the pruned model is smaller and faster in fact; each layer keeps its own
most important heads and units. `fit_to_state` rebuilds those shapes from a saved state dict.

Unstructured pruning zeroes the smallest weights (``torch.nn.utils.prune``, global L1 over the
encoder's linears) and makes the zeros permanent; `keep_zeros` then keeps them zero through a
recovery fine-tune by masking their gradients (Adam moves a weight only where its gradient was
ever nonzero).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from kelm.errors import ConfigError


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer layers of a BERT-style model (``...encoder.layer``), in order."""
    for name, module in model.named_modules():
        if name.endswith("encoder.layer") and isinstance(module, nn.ModuleList):
            layers = list(module)
            if layers and all(_is_bert_layer(layer) for layer in layers):
                return layers
    raise ConfigError(
        f"structured pruning needs a BERT-style encoder (encoder.layer with attention.self.query ...); "
        f"{type(model).__name__} has none"
    )


def _is_bert_layer(layer: nn.Module) -> bool:
    try:
        attn = layer.get_submodule("attention.self")
        layer.get_submodule("intermediate.dense")
        layer.get_submodule("output.dense")
    except AttributeError:
        return False
    return all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("query", "key", "value"))


def encoder_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every linear inside the encoder layers (what unstructured pruning thins)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".encoder." in f".{n}"]


# -- unstructured -------------------------------------------------------------------------------
def magnitude_prune(model: nn.Module, sparsity: float) -> int:
    """Zero the ``sparsity`` share of encoder linear weights with the smallest magnitude (one global
    threshold) and make it permanent; returns how many weights are now zero."""
    if not 0.0 < sparsity < 1.0:
        raise ConfigError(f"sparsity must be between 0 and 1 (exclusive), not {sparsity}")
    linears = encoder_linears(model)
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no encoder linear layers to prune")
    prune.global_unstructured([(m, "weight") for _, m in linears], pruning_method=prune.L1Unstructured, amount=sparsity)
    for _, m in linears:
        prune.remove(m, "weight")
    return sum(int((m.weight == 0).sum()) for _, m in linears)


def sparsity_of(model: nn.Module) -> float:
    """Share of exactly-zero weights among the encoder's linear weights."""
    linears = encoder_linears(model)
    total = sum(m.weight.numel() for _, m in linears)
    return sum(int((m.weight == 0).sum()) for _, m in linears) / max(total, 1)


def keep_zeros(model: nn.Module) -> int:
    """Mask the gradient of every exactly-zero encoder linear weight, so optimizers (without weight
    decay pulling it elsewhere; decay keeps 0 at 0) never move it; returns the number masked."""
    n = 0
    for _, m in encoder_linears(model):
        mask = m.weight.detach() != 0
        zeros = int((~mask).sum())
        if zeros:
            m.weight.register_hook(lambda g, mask=mask: g * mask)
            n += zeros
    return n


# -- structured ---------------------------------------------------------------------------------
def _head_size(layer: nn.Module) -> int:
    return int(layer.attention.self.attention_head_size)


def taylor_importance(
    model: nn.Module, batches: Iterable[Any], loss_fn: Callable[[nn.Module, Any], torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the importance of each head and each FFN unit: ``|Σ w · ∂L/∂w|`` over the unit's
    weights (its rows of query/key/value and intermediate, its columns of the output linears),
    summed over batches (Molchanov et al. 2019; Michel et al. 2019 for heads)."""
    layers = encoder_layers(model)
    heads = [torch.zeros(int(layer.attention.self.query.out_features) // _head_size(layer)) for layer in layers]
    units = [torch.zeros(int(layer.intermediate.dense.out_features)) for layer in layers]
    was_training = model.training
    model.eval()  # no dropout: the estimate is of the deterministic model
    for batch in batches:
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        for i, layer in enumerate(layers):
            heads[i] += _per_head(layer).abs()
            units[i] += _per_unit(layer).abs()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return heads, units


def _wg(linear: nn.Linear, dim: int) -> torch.Tensor:
    """``w · grad`` summed to one value per output row (dim 1) or input column (dim 0)."""
    w, g = linear.weight, linear.weight.grad
    if g is None:
        return torch.zeros(w.shape[1 - dim] if dim == 0 else w.shape[0])
    out = (w * g).detach().sum(dim=dim)
    if dim == 1 and linear.bias is not None and linear.bias.grad is not None:
        out = out + (linear.bias * linear.bias.grad).detach()
    return out


def _per_head(layer: nn.Module) -> torch.Tensor:
    attn, size = layer.attention.self, _head_size(layer)
    rows = _wg(attn.query, 1) + _wg(attn.key, 1) + _wg(attn.value, 1) + _wg(layer.attention.output.dense, 0)
    return rows.view(-1, size).sum(dim=1)


def _per_unit(layer: nn.Module) -> torch.Tensor:
    return _wg(layer.intermediate.dense, 1) + _wg(layer.output.dense, 0)


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new linear keeping output rows (dim 0) or input columns (dim 1) ``index``."""
    weight = linear.weight.detach().index_select(dim, index).clone()
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.detach()[index].clone()
    elif bias is not None:
        bias = bias.detach().clone()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def keep_heads(layer: nn.Module, heads: torch.Tensor) -> None:
    """Slice ``layer``'s attention down to the heads ``heads`` (sorted indices)."""
    attn, size = layer.attention.self, _head_size(layer)
    rows = (heads[:, None] * size + torch.arange(size)[None, :]).flatten()
    for name in ("query", "key", "value"):
        setattr(attn, name, _slice_linear(getattr(attn, name), rows, 0))
    out = layer.attention.output
    out.dense = _slice_linear(out.dense, rows, 1)
    attn.num_attention_heads = len(heads)
    attn.all_head_size = len(heads) * size


def keep_units(layer: nn.Module, units: torch.Tensor) -> None:
    """Slice ``layer``'s FFN down to the units ``units`` (sorted indices)."""
    layer.intermediate.dense = _slice_linear(layer.intermediate.dense, units, 0)
    layer.output.dense = _slice_linear(layer.output.dense, units, 1)


def prune_structured(
    model: nn.Module,
    importance: tuple[list[torch.Tensor], list[torch.Tensor]],
    head_ratio: float,
    ffn_ratio: float,
) -> dict[str, list[int]]:
    """Remove the least important ``head_ratio`` of each layer's heads and ``ffn_ratio`` of its FFN
    units (at least one of each stays); returns the kept counts per layer."""
    for name, r in (("head_ratio", head_ratio), ("ffn_ratio", ffn_ratio)):
        if not 0.0 <= r < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), not {r}")
    heads, units = importance
    kept: dict[str, list[int]] = {"heads": [], "ffn": []}
    for layer, h, u in zip(encoder_layers(model), heads, units, strict=True):
        n_h = max(1, round(len(h) * (1 - head_ratio)))
        n_u = max(1, round(len(u) * (1 - ffn_ratio)))
        if n_h < len(h):
            keep_heads(layer, torch.topk(h, n_h).indices.sort().values)
        if n_u < len(u):
            keep_units(layer, torch.topk(u, n_u).indices.sort().values)
        kept["heads"].append(int(layer.attention.self.num_attention_heads))
        kept["ffn"].append(int(layer.intermediate.dense.out_features))
    config = getattr(model, "config", None)
    if config is not None and len(set(kept["ffn"])) == 1:  # one width: config.json describes it
        config.intermediate_size = kept["ffn"][0]
    return kept


def fit_to_state(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    """Give each layer of ``model`` the head count and FFN width its saved weights have
    (``shapes``: state-dict name → shape), before loading them."""
    for prefix, module in model.named_modules():
        if not (prefix.endswith("encoder.layer") and isinstance(module, nn.ModuleList)):
            continue
        for i, layer in enumerate(module):
            base = f"{prefix}.{i}"
            q = shapes.get(f"{base}.attention.self.query.weight")
            f = shapes.get(f"{base}.intermediate.dense.weight")
            if q is not None and q[0] != layer.attention.self.query.out_features:
                keep_heads(layer, torch.arange(q[0] // _head_size(layer)))
            if f is not None and f[0] != layer.intermediate.dense.out_features:
                keep_units(layer, torch.arange(f[0]))


__all__ = [
    "encoder_layers",
    "encoder_linears",
    "fit_to_state",
    "keep_heads",
    "keep_units",
    "keep_zeros",
    "magnitude_prune",
    "prune_structured",
    "sparsity_of",
    "taylor_importance",
]
