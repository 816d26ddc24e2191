"""Incremental training: a trained model's embeddings seed a model over a grown graph.

The grown vocabularies list the old ids first, in their old order (`kelm.kg.vocab.grown_order`),
so an old entity keeps its row. `seed_rows` copies the old rows; with reciprocal relations the
inverse of relation ``r`` sits at ``r + R``, so the old inverse rows move to the new ``R``.
`freeze_rows` keeps the copied rows exactly as trained: their gradient is zero, so Adam, Adagrad
and SGD (without weight decay) never move them, while the new rows train.
"""

from __future__ import annotations

import torch
from torch import nn

from kelm.kge.scorer import KGEScorer


def _relation_rows(old_relations: int, new_relations: int, reciprocal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the old relation table and where they go in the new one."""
    src = torch.arange(old_relations)
    if not reciprocal:
        return src, src
    return torch.cat([src, src + old_relations]), torch.cat([src, src + new_relations])


def seed_rows(model: KGEScorer, old: KGEScorer) -> dict[str, torch.Tensor]:
    """Copy ``old``'s entity and relation rows into ``model`` (whose vocabularies grew from
    ``old``'s, old ids first); returns the rows copied per parameter name."""
    if model.reciprocal != old.reciprocal:
        raise ValueError("the seeding model and the new one disagree on reciprocal relations")
    new_kge, old_kge = model.kge, old.kge
    entities = torch.arange(old_kge.entity.num_embeddings)
    src, dst = _relation_rows(old.num_relations, model.num_relations, model.reciprocal)
    with torch.no_grad():
        new_kge.entity.weight[entities] = old_kge.entity.weight.to(new_kge.entity.weight)
        new_kge.relation.weight[dst] = old_kge.relation.weight[src].to(new_kge.relation.weight)
    return {"kge.entity.weight": entities, "kge.relation.weight": dst}


def without_rows(grad: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``grad`` with the given rows zeroed (dense) or dropped (row-sparse)."""
    index = index.to(grad.device)
    if not grad.is_sparse:
        return grad.index_fill(0, index, 0.0)
    grad = grad.coalesce()
    keep = ~torch.isin(grad.indices()[0], index)
    return torch.sparse_coo_tensor(
        grad.indices()[:, keep], grad.values()[keep], grad.shape, is_coalesced=True, check_invariants=False
    )


def freeze_rows(model: nn.Module, rows: dict[str, torch.Tensor]) -> None:
    """Zero the gradient of the given rows of each named parameter, on every backward pass."""
    params = dict(model.named_parameters())
    for name, index in rows.items():
        params[name].register_hook(lambda grad, index=index: without_rows(grad, index))


__all__ = ["freeze_rows", "seed_rows"]
