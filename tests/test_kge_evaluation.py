"""Filtered realistic ranks agree exactly with a brute-force reference; metric formulas and grouping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from kelm.errors import ConfigError
from kelm.kge import FilteredRankEvaluator, RankingResult
from kelm.kge.models import KGEModel, build_kge_model

E, R = 30, 4


class TableModel(KGEModel):
    """Scores from a fixed table ``(R, E, E)`` indexed [r, h, t]: small integers give many exact ties."""

    name = "table"

    def __init__(self, table_REE: Tensor):
        super().__init__(table_REE.shape[1], table_REE.shape[0], 1)
        self.register_buffer("table_REE", table_REE.float())

    def score_hrt(self, h: Tensor, r: Tensor, t: Tensor) -> Tensor:
        return self.table_REE[r, h, t]

    def score_t(self, h: Tensor, r: Tensor, candidates: Tensor | None = None) -> Tensor:
        return self.table_REE[r, h]

    def score_h(self, r: Tensor, t: Tensor, candidates: Tensor | None = None) -> Tensor:
        return self.table_REE[r, :, t]


def random_graph(seed: int, n_known: int = 200) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack(
        [
            torch.randint(0, E, (n_known,), generator=g),
            torch.randint(0, R, (n_known,), generator=g),
            torch.randint(0, E, (n_known,), generator=g),
        ],
        dim=1,
    )


def brute_force_ranks(model: KGEModel, known: Tensor, triples: Tensor, side: str) -> list[float]:
    """Per query, loop over all entities: skip other known answers, count higher and equal scores."""
    known_set = {tuple(x) for x in known.tolist()}
    ranks = []
    for h, r, t in triples.tolist():
        answer = t if side == "tail" else h

        def triple(e: int, h=h, r=r, t=t) -> tuple[int, int, int]:
            return (h, r, e) if side == "tail" else (e, r, t)

        def score(e: int) -> float:
            hh, rr, tt = triple(e)
            return model.score_hrt(torch.tensor([hh]), torch.tensor([rr]), torch.tensor([tt])).item()

        true = score(answer)
        higher = equal = 0
        for e in range(E):
            if e == answer or triple(e) in known_set:
                continue
            s = score(e)
            higher += s > true
            equal += s == true
        ranks.append((1 + higher + 1 + higher + equal) / 2)
    return ranks


@pytest.mark.parametrize("budget_mb", [1e-9, 1e3], ids=["one-query-chunks", "all-at-once"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_brute_force_with_ties(seed, budget_mb):
    known = random_graph(seed)
    g = torch.Generator().manual_seed(100 + seed)
    model = TableModel(torch.randint(0, 4, (R, E, E), generator=g))
    # test triples: half known, half possibly unknown (their answer is not in the filter)
    triples = torch.cat([known[:25], random_graph(50 + seed, 15)])
    evaluator = FilteredRankEvaluator(known, E, memory_budget_mb=budget_mb)
    if budget_mb < 1:
        assert evaluator.chunk_size() == 1
    else:
        assert evaluator.chunk_size() >= len(triples)
    result = evaluator.rank(model, triples)
    expected = brute_force_ranks(model, known, triples, "tail") + brute_force_ranks(model, known, triples, "head")
    assert result.ranks.tolist() == expected
    assert any(r != int(r) for r in expected), "the table should create ties"
    n = len(triples)
    assert result.sides.tolist() == [0] * n + [1] * n
    assert result.relations.tolist() == triples[:, 1].tolist() * 2
    head_only = evaluator.rank(model, triples, sides=("head",))
    assert head_only.ranks.tolist() == expected[n:]
    assert head_only.sides.tolist() == [1] * n


def test_real_model_chunking_does_not_change_ranks():
    torch.manual_seed(0)
    known = random_graph(3)
    model = build_kge_model("rotate", E, R, 8)
    small = FilteredRankEvaluator(known, E, memory_budget_mb=1e-9).rank(model, known[:40])
    large = FilteredRankEvaluator(known, E).rank(model, known[:40])
    assert torch.equal(small.ranks, large.ranks)
    assert small.ranks.tolist() == brute_force_ranks(model, known, known[:40], "tail") + brute_force_ranks(
        model, known, known[:40], "head"
    )


def test_perfect_model_has_mrr_one():
    known = random_graph(4)
    table = torch.zeros(R, E, E)
    table[known[:, 1], known[:, 0], known[:, 2]] = 1.0
    model = TableModel(table)
    metrics = FilteredRankEvaluator(known, E).evaluate(model, known[:50])
    assert metrics["mrr"] == 1.0 and metrics["mr"] == 1.0 and metrics["hits@1"] == 1.0
    assert metrics["tail/mrr"] == 1.0 and metrics["head/mrr"] == 1.0


def test_constant_model_gets_middle_rank():
    known = torch.tensor([[0, 0, 1], [0, 0, 2]])
    model = TableModel(torch.zeros(R, E, E))
    result = FilteredRankEvaluator(known, E).rank(model, known[:1], sides=("tail",))
    # 28 unfiltered candidates tie with the answer: optimistic 1, pessimistic 29
    assert result.ranks.tolist() == [15.0]


def test_metric_formulas_and_per_relation():
    result = RankingResult(
        ranks=torch.tensor([1.0, 2.5, 4.0, 12.0, 3.0]),
        sides=torch.tensor([0, 0, 0, 1, 1]),
        relations=torch.tensor([2, 0, 2, 2, 0]),
    )
    m = result.metrics()
    assert m["mrr"] == pytest.approx((1 + 1 / 2.5 + 1 / 4 + 1 / 12 + 1 / 3) / 5)
    assert m["mr"] == pytest.approx((1 + 2.5 + 4 + 12 + 3) / 5)
    assert m["hits@1"] == pytest.approx(1 / 5)
    assert m["hits@3"] == pytest.approx(3 / 5)
    assert m["hits@10"] == pytest.approx(4 / 5)
    assert m["tail/mrr"] == pytest.approx((1 + 1 / 2.5 + 1 / 4) / 3)
    assert m["head/mrr"] == pytest.approx((1 / 12 + 1 / 3) / 2)
    by_rel = result.per_relation(["a", "b", "c"])
    assert list(by_rel) == ["a", "c"]
    assert by_rel["a"]["count"] == 2 and by_rel["a"]["mrr"] == pytest.approx((1 / 2.5 + 1 / 3) / 2)
    assert by_rel["c"]["count"] == 3 and by_rel["c"]["mr"] == pytest.approx((1 + 4 + 12) / 3)
    assert list(result.per_relation()) == ["0", "2"]


def test_restores_training_mode_and_needs_no_grad():
    torch.manual_seed(0)
    model = build_kge_model("distmult", E, R, 8, dropout=0.5).train()
    known = random_graph(5)
    evaluator = FilteredRankEvaluator(known, E)
    first, second = evaluator.evaluate(model, known[:20]), evaluator.evaluate(model, known[:20])
    assert first == second  # dropout is off while ranking
    assert model.training


def test_empty_triples_and_bad_sides():
    known = random_graph(6)
    model = TableModel(torch.zeros(R, E, E))
    evaluator = FilteredRankEvaluator(known, E)
    result = evaluator.rank(model, torch.zeros(0, 3, dtype=torch.int64))
    assert result.ranks.numel() == 0 and math.isnan(result.metrics()["mrr"])
    with pytest.raises(ConfigError, match="sides"):
        evaluator.rank(model, known[:2], sides=("middle",))


def test_duck_typed_scorer_is_accepted():
    """Anything with ``num_entities``, ``score_t`` and ``score_h`` can be ranked; triples stay put."""
    known = random_graph(7)
    table = TableModel(torch.randint(0, 4, (R, E, E), generator=torch.Generator().manual_seed(7)))

    class Scorer:
        num_entities = E

        def score_t(self, h: Tensor, r: Tensor, candidates: Tensor | None = None) -> Tensor:
            return table.score_t(h, r)

        def score_h(self, r: Tensor, t: Tensor, candidates: Tensor | None = None) -> Tensor:
            return table.score_h(r, t)

    evaluator = FilteredRankEvaluator(known, E, memory_budget_mb=1e-9)
    assert torch.equal(evaluator.rank(Scorer(), known[:20]).ranks, evaluator.rank(table, known[:20]).ranks)


def test_nan_scores_rank_below_every_number() -> None:
    """A NaN candidate never outranks the answer; a NaN answer ranks as -inf (ties with -inf only)."""
    table = torch.zeros(1, 4, 4)
    table[0, 0] = torch.tensor([float("nan"), 1.0, 2.0, float("-inf")])  # query (0, 0, ?)
    model = TableModel(table)
    evaluator = FilteredRankEvaluator(torch.tensor([[0, 0, 1], [0, 0, 0]]), 4)
    ranks = evaluator.rank(model, torch.tensor([[0, 0, 1], [0, 0, 0]]), sides=("tail",)).ranks.tolist()
    # answer 1 (score 1.0): only entity 2 is higher; NaN entity 0 is filtered for it anyway
    # answer 0 (NaN -> -inf): entities 1 and 2 are higher, entity 3 ties; 1 is filtered as known
    assert ranks == [2.0, 2.5]
