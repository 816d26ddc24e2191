"""Filtered rank-based link-prediction evaluation: MRR, MR and Hits@k over tail and head queries."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kelm.errors import ConfigError
from kelm.kg.tensors import ragged_gather
from kelm.kge.models import KGEModel

SIDES = ("tail", "head")
HITS_AT = (1, 3, 10)


def rank_metrics(ranks: Tensor) -> dict[str, float]:
    """MRR (mean 1/rank), MR (mean rank) and Hits@k (share of ranks <= k); NaN when empty."""
    if ranks.numel() == 0:
        return {"mrr": float("nan"), "mr": float("nan"), **{f"hits@{k}": float("nan") for k in HITS_AT}}
    ranks = ranks.double()
    out = {"mrr": ranks.reciprocal().mean().item(), "mr": ranks.mean().item()}
    out.update({f"hits@{k}": (ranks <= k).double().mean().item() for k in HITS_AT})
    return out


@dataclass
class RankingResult:
    """Per-query realistic ranks; tail queries first, then head queries."""

    ranks: Tensor  # (Q,) float: mean of optimistic and pessimistic rank
    sides: Tensor  # (Q,) 0 = tail query, 1 = head query
    relations: Tensor  # (Q,) relation id of each query
    seen: Tensor | None = None  # (Q,) bool: the query's triple has head, relation and tail in train

    def subset(self, mask: Tensor) -> RankingResult:
        """The queries where ``mask`` ``(Q,)`` is True."""
        seen = None if self.seen is None else self.seen[mask]
        return RankingResult(self.ranks[mask], self.sides[mask], self.relations[mask], seen)

    def metrics(self) -> dict[str, float]:
        """``mrr``, ``mr``, ``hits@{1,3,10}`` over all queries, plus ``tail/mrr`` and ``head/mrr``."""
        out = rank_metrics(self.ranks)
        for code, side in enumerate(SIDES):
            side_ranks = self.ranks[self.sides == code]
            if side_ranks.numel():
                out[f"{side}/mrr"] = rank_metrics(side_ranks)["mrr"]
        return out

    def per_relation(self, relation_names: list[str] | None = None) -> dict[str, dict[str, float]]:
        """Metrics (and query ``count``) per relation present, keyed by name or by id as a string."""
        out: dict[str, dict[str, float]] = {}
        for rel in torch.unique(self.relations).tolist():
            ranks = self.ranks[self.relations == rel]
            key = relation_names[rel] if relation_names is not None else str(rel)
            out[key] = {**rank_metrics(ranks), "count": float(ranks.numel())}
        return out


def _count(mask_BE: Tensor) -> Tensor:
    """True entries per row; summing the bytes as int32 skips the int64 copy of ``bool.sum``."""
    return mask_BE.view(torch.uint8).sum(1, dtype=torch.int32)


@dataclass
class _FilterIndex:
    """CSR map from a query key to the known answers: ``answers[offsets[i]:offsets[i + 1]]`` for ``keys[i]``."""

    keys: Tensor  # (K,) sorted unique keys
    offsets: Tensor  # (K + 1,)
    answers: Tensor  # (N,)

    @classmethod
    def build(cls, keys_N: Tensor, answers_N: Tensor) -> _FilterIndex:
        order = torch.argsort(keys_N, stable=True)
        keys, counts = torch.unique_consecutive(keys_N[order], return_counts=True)
        offsets = torch.zeros(len(keys) + 1, dtype=torch.int64)
        offsets[1:] = counts.cumsum(0)
        return cls(keys, offsets, answers_N[order])

    def to(self, device: torch.device) -> _FilterIndex:
        return _FilterIndex(self.keys.to(device), self.offsets.to(device), self.answers.to(device))

    def lookup(self, query_keys_B: Tensor) -> tuple[Tensor, Tensor]:
        """``(rows, answers)``: every known answer of every query, as coordinates into a ``(B, E)`` matrix."""
        if len(self.keys) == 0:
            empty = query_keys_B.new_zeros(0)
            return empty, empty
        pos_B = torch.searchsorted(self.keys, query_keys_B).clamp_(max=len(self.keys) - 1)
        found_B = self.keys[pos_B] == query_keys_B
        start_B = self.offsets[pos_B]
        return ragged_gather(self.answers, start_B, (self.offsets[pos_B + 1] - start_B) * found_B)


class FilteredRankEvaluator:
    """Filtered realistic ranks of test triples against all entities.

    ``known`` holds every true triple of every split; for a tail query ``(h, r, ?)`` the other known
    tails of ``(h, r)`` are removed from the candidates (likewise heads of ``(?, r, t)``), while the
    true answer itself counts once. With ties, the rank is the mean of the optimistic rank
    (1 + #higher) and the pessimistic rank (#higher-or-equal, counting the answer itself).

    Queries are scored with 1-N scoring in chunks sized so that one ``(chunk, E)`` score matrix and
    its temporaries fit in ``memory_budget_mb``; the dense ``(Q, E)`` matrix is never built. Filter
    answers are precomputed once as CSR indices keyed by ``(h, r)`` and ``(r, t)``.
    """

    def __init__(self, known: Tensor, num_entities: int, memory_budget_mb: float = 256.0):
        if memory_budget_mb <= 0:
            raise ConfigError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
        known_N3 = torch.unique(known.reshape(-1, 3).long().cpu(), dim=0)
        self.num_entities = num_entities
        self.memory_budget_mb = memory_budget_mb
        h, r, t = known_N3.unbind(1)
        self._index = {
            "tail": _FilterIndex.build(self._key(r, h), t),
            "head": _FilterIndex.build(self._key(r, t), h),
        }
        self._on_device: dict[torch.device, dict[str, _FilterIndex]] = {}

    def _key(self, r: Tensor, e: Tensor) -> Tensor:
        return r * self.num_entities + e

    def chunk_size(self, score_bytes: int = 4) -> int:
        """Queries per chunk; a score row costs ``E`` x (a score and a boolean comparison result)."""
        row_bytes = max(1, self.num_entities) * (score_bytes + 1)
        return max(1, int(self.memory_budget_mb * 2**20 // row_bytes))

    def _indices(self, device: torch.device) -> dict[str, _FilterIndex]:
        if device not in self._on_device:
            self._on_device[device] = {side: index.to(device) for side, index in self._index.items()}
        return self._on_device[device]

    def _rank_chunk(self, scores_BE: Tensor, answer_B: Tensor, index: _FilterIndex, keys_B: Tensor) -> Tensor:
        """Realistic ranks ``(B,)`` of ``answer_B`` among non-filtered candidates.

        ``scores_BE`` is consumed (filtered entries are overwritten in place). A NaN score ranks
        below every number: a NaN candidate never counts as higher or equal, and a NaN true score
        is taken as -inf."""
        arange_B = torch.arange(len(scores_BE), device=scores_BE.device)
        true_B1 = scores_BE[arange_B, answer_B].nan_to_num(nan=float("-inf")).unsqueeze(1)
        rows, cols = index.lookup(keys_B)
        scores_BE[rows, cols] = float("nan")  # NaN compares false: filtered entities never count
        scores_BE[arange_B, answer_B] = float("nan")  # the answer counts once, below
        higher_B = _count(scores_BE > true_B1)
        higher_or_equal_B = _count(scores_BE >= true_B1)
        return (higher_B + higher_or_equal_B + 2).double() / 2

    @torch.no_grad()
    def rank(self, model: KGEModel, triples: Tensor, sides: tuple[str, ...] = SIDES) -> RankingResult:
        """Filtered realistic ranks of ``triples`` ``(n, 3)`` for each of ``sides`` ("tail", "head").

        An ``nn.Module`` model is put in eval mode for the call (and restored) and the triples are moved
        to its parameters' device. Any other object with ``score_t``/``score_h`` is used as it is, with
        the triples where they are.
        """
        unknown = [s for s in sides if s not in SIDES]
        if unknown:
            raise ConfigError(f"evaluation sides must be among {', '.join(SIDES)}, got {', '.join(unknown)}")
        model_entities = getattr(model, "num_entities", self.num_entities)
        if model_entities != self.num_entities:
            raise ValueError(f"model has {model_entities} entities, evaluator {self.num_entities}")
        is_module = isinstance(model, nn.Module)
        first = next(itertools.chain(model.parameters(), model.buffers()), None) if is_module else None
        device = first.device if first is not None else triples.device
        score_bytes = first.element_size() if first is not None and first.is_floating_point() else 4
        triples_N3 = triples.reshape(-1, 3).long().to(device)
        indices = self._indices(device)
        step = self.chunk_size(score_bytes)
        was_training = is_module and model.training
        if is_module:
            model.eval()
        ranks, side_codes, relations = [], [], []
        try:
            for side in sides:
                code = SIDES.index(side)
                for chunk_B3 in triples_N3.split(step):
                    h_B, r_B, t_B = chunk_B3.unbind(1)
                    if side == "tail":
                        scores_BE, answer_B, keys_B = model.score_t(h_B, r_B), t_B, self._key(r_B, h_B)
                    else:
                        scores_BE, answer_B, keys_B = model.score_h(r_B, t_B), h_B, self._key(r_B, t_B)
                    ranks.append(self._rank_chunk(scores_BE, answer_B, indices[side], keys_B).cpu())
                    side_codes.append(torch.full((len(chunk_B3),), code, dtype=torch.int64))
                    relations.append(r_B.cpu())
        finally:
            if is_module:
                model.train(was_training)
        if not ranks:
            empty = torch.zeros(0, dtype=torch.int64)
            return RankingResult(empty.double(), empty, empty)
        return RankingResult(torch.cat(ranks), torch.cat(side_codes), torch.cat(relations))

    def evaluate(self, model: KGEModel, triples: Tensor) -> dict[str, float]:
        """``rank(model, triples).metrics()`` over tail and head queries."""
        return self.rank(model, triples).metrics()
