"""Rules plus embeddings: ``α · z(rules) + (1 − α) · z(KGE)``, ``α`` chosen on the validation split.

The mixing is `kelm.kge.mixing`'s, the one the text/structure hybrid uses: both scores are
standardised per query, ``α = 1`` ranks as the rules alone and ``α = 0`` as the KGE run alone,
and the ``α`` of the best validation MRR (the smaller on ties) is applied once to the test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kelm.kge.evaluation import FilteredRankEvaluator
from kelm.kge.mixing import ALPHA_GRID, best_alpha, load_structural, rank_alphas
from kelm.reason.apply import Aggregation, RuleScorer
from kelm.reason.folder import RuleSet, split_by_relation


def evaluate_with_kge(
    rule_set: RuleSet, kge_run: str | Path, aggregation: Aggregation = "max", valid: str = "valid",
    test: str = "test",
) -> dict[str, Any]:  # fmt: skip
    """Test metrics of the rules alone, the KGE run alone and their hybrid, with the chosen ``α``."""
    tt = rule_set.tensors
    valid_facts, test_facts = split_by_relation(tt, valid), split_by_relation(tt, test)
    kge = load_structural(kge_run, tt.entity_ids, tt.relation_ids, field="--kge")
    rules = RuleScorer(rule_set.graph, rule_set.rules, aggregation)
    evaluator = FilteredRankEvaluator(torch.cat(list(tt.triples.values())), tt.num_entities)
    with torch.no_grad():
        on_valid = rank_alphas(evaluator, rules, kge, valid_facts, ALPHA_GRID)
        valid_mrr = {a: float(r.metrics()["mrr"]) for a, r in on_valid.items()}
        alpha = best_alpha(valid_mrr)
        on_test = rank_alphas(evaluator, rules, kge, test_facts, (0.0, alpha, 1.0))
    return {
        "alpha": alpha,
        "valid_mrr": valid_mrr,
        "rules": on_test[1.0].metrics(),
        "kge": on_test[0.0].metrics(),
        "hybrid": on_test[alpha].metrics(),
    }
