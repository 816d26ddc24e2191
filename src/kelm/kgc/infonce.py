"""The contrastive loss of text-based KG completion (SimKGC, Wang et al. 2022), and its negatives.

For a query ``q_i`` (the embedding of "head: description [SEP] relation") and candidate embeddings
(all L2-normalised, so dot products are cosines) the logits are

- in-batch: ``q_i · t_j`` for every tail ``t_j`` of the batch (with ``--nproc N``: of the global
  batch, gathered from every rank with gradient); the positive is ``t_i``, whose cosine has the
  additive margin ``γ`` subtracted;
- self-negative: ``q_i · h_i``, the query's own head entity as a candidate;
- pre-batch: ``w · q_i · p_k`` for the detached tail embeddings of the last K batches (``w`` the
  pre-batch weight, 0.5 by default as in SimKGC).

All logits are divided by the temperature ``τ`` and the loss is the cross-entropy of the positive,
averaged over queries. A negative that is a true answer (a known triple ``(h_i, r_i, e)``, or the
positive's own entity appearing again) is masked out, i.e. removed from the softmax.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


def triple_keys(h: Tensor, r: Tensor, e: Tensor, num_entities: int, num_relations: int) -> Tensor:
    """One int64 key per ``(h, r, e)``: ``(h · R + r) · E + e`` (broadcasts)."""
    return (h.long() * num_relations + r.long()) * num_entities + e.long()


def known_answer_mask(
    h_B: Tensor, r_B: Tensor, cand_N: Tensor, known_keys: Tensor, num_entities: int, num_relations: int
) -> Tensor:
    """``(B, N)`` bool: True where ``(h_b, r_b, cand_n)`` is a known triple (``known_keys`` sorted)."""
    keys_BN = triple_keys(h_B[:, None], r_B[:, None], cand_N[None, :], num_entities, num_relations)
    if known_keys.numel() == 0:
        return torch.zeros_like(keys_BN, dtype=torch.bool)
    pos = torch.searchsorted(known_keys, keys_BN).clamp_(max=len(known_keys) - 1)
    return known_keys[pos] == keys_BN


def contrastive_loss(
    query_BD: Tensor,
    tails_ND: Tensor,
    positive_B: Tensor,
    temperature: Tensor | float,
    margin: float = 0.0,
    mask_BN: Tensor | None = None,
    self_BD: Tensor | None = None,
    self_mask_B: Tensor | None = None,
    prebatch_PD: Tensor | None = None,
    prebatch_mask_BP: Tensor | None = None,
    prebatch_weight: float = 1.0,
) -> Tensor:
    """InfoNCE with additive margin over in-batch, self and pre-batch negatives (see the module doc).

    ``tails_ND`` holds every in-batch candidate, ``positive_B`` the column of each query's true
    tail in it. Masks are True for negatives to drop; the positive is never dropped. Pre-batch
    logits are multiplied by ``prebatch_weight`` (SimKGC's 0.5 softens the stale negatives)."""
    B = len(query_BD)
    rows = torch.arange(B, device=query_BD.device)
    cos_BN = query_BD @ tails_ND.T
    cos_BN = cos_BN - margin * F.one_hot(positive_B, cos_BN.shape[1]).to(cos_BN.dtype)
    drop = torch.zeros_like(cos_BN, dtype=torch.bool) if mask_BN is None else mask_BN.clone()
    drop[rows, positive_B] = False
    parts, drops = [cos_BN], [drop]
    if self_BD is not None:
        parts.append((query_BD * self_BD).sum(-1, keepdim=True))
        self_drop = torch.zeros(B, dtype=torch.bool, device=query_BD.device) if self_mask_B is None else self_mask_B
        drops.append(self_drop[:, None])
    if prebatch_PD is not None and len(prebatch_PD):
        parts.append(prebatch_weight * (query_BD @ prebatch_PD.T))
        pre_drop = torch.zeros(B, len(prebatch_PD), dtype=torch.bool, device=query_BD.device)
        drops.append(pre_drop if prebatch_mask_BP is None else prebatch_mask_BP)
    logits = torch.cat(parts, 1) / temperature
    logits = logits.masked_fill(torch.cat(drops, 1), float("-inf"))
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), positive_B)


class PreBatchQueue:
    """Detached candidate embeddings (and their entity ids) of the last ``size`` batches."""

    def __init__(self, size: int):
        self.size = size
        self._items: deque[tuple[Tensor, Tensor]] = deque(maxlen=max(size, 1))

    def __len__(self) -> int:
        return sum(len(ids) for _, ids in self._items) if self.size else 0

    def get(self) -> tuple[Tensor, Tensor] | None:
        """``(P, D)`` embeddings and ``(P,)`` ids, oldest first, or None when empty."""
        if not self.size or not self._items:
            return None
        return torch.cat([e for e, _ in self._items]), torch.cat([i for _, i in self._items])

    def push(self, emb: Tensor, ids: Tensor) -> None:
        if self.size:
            self._items.append((emb.detach(), ids.detach()))

    def clear(self) -> None:
        self._items.clear()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: Tensor) -> Tensor:
    """Every rank's ``x`` concatenated in rank order; gradients flow back to each rank's own part.

    ``torch.distributed.nn.functional.all_gather`` keeps autograd: its backward sums, over ranks,
    the gradient of every rank's loss with respect to this rank's rows, which with DDP's gradient
    averaging gives exactly the gradient of the global-batch loss."""
    if world_size() == 1:
        return x
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x.contiguous()))


def gather_ids(x: Tensor) -> Tensor:
    """Every rank's ``x`` concatenated in rank order (no gradient)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


__all__ = [
    "PreBatchQueue",
    "contrastive_loss",
    "gather_ids",
    "gather_with_grad",
    "known_answer_mask",
    "triple_keys",
]
