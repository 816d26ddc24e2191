"""Knowledge-graph embedding training support: filtered link-prediction evaluation."""

from kelm.kge.evaluation import FilteredRankEvaluator, RankingResult, rank_metrics

__all__ = ["FilteredRankEvaluator", "RankingResult", "rank_metrics"]
