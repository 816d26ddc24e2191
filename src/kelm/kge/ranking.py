"""Filtered ranking as a task uses it: one evaluator over every known triple, metrics as plain
floats, and the per-relation report merged from every rank's results. Shared by KGE link
prediction and text-based KG completion."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from kelm.kge.evaluation import FilteredRankEvaluator, RankingResult

RANK_METRICS = ("mrr", "mr", "hits@1", "hits@3", "hits@10")


class Ranking:
    """Filtered ranks over ``known`` triples of ``num_entities`` entities, for both ``sides``."""

    def __init__(self, known: torch.Tensor, num_entities: int, memory_mb: float, sides: tuple[str, ...]):
        self.known, self.num_entities, self.memory_mb, self.sides = known, num_entities, memory_mb, sides
        self._evaluator: FilteredRankEvaluator | None = None

    @property
    def evaluator(self) -> FilteredRankEvaluator:
        """Built on first use (it moves its index per device)."""
        if self._evaluator is None:
            self._evaluator = FilteredRankEvaluator(self.known, self.num_entities, self.memory_mb)
        return self._evaluator

    def rank(self, scoring: Any, triples: torch.Tensor) -> RankingResult:
        return self.evaluator.rank(scoring, triples, sides=self.sides)


def metric_values(result: RankingResult | None) -> dict[str, float]:
    """`RANK_METRICS` of a ranking (zeros for an empty evaluation share)."""
    if result is None:
        return {k: 0.0 for k in RANK_METRICS}
    metrics = result.metrics()
    return {k: float(metrics[k]) for k in RANK_METRICS}


def merge_rankings(details: Sequence[RankingResult | None]) -> RankingResult:
    """Every rank's ranking of the last evaluation as one."""
    parts = [d for d in details if d is not None]
    merged = RankingResult(*(torch.cat([getattr(p, f) for p in parts]) for f in ("ranks", "sides", "relations")))
    if parts and all(p.seen is not None for p in parts):
        merged.seen = torch.cat([p.seen for p in parts])  # type: ignore[misc]
    return merged


def per_relation_report(
    merged: RankingResult, relation_ids: list[str], label: Callable[[str], str | None]
) -> dict[str, Any]:
    """``per_relation``: MRR, MR, Hits@k, query count and label per relation id."""
    table = merged.per_relation(relation_ids)
    return {"per_relation": {rid: {"label": label(rid) or rid, **m} for rid, m in table.items()}}


__all__ = ["RANK_METRICS", "Ranking", "merge_rankings", "metric_values", "per_relation_report"]
