"""Hybrid α search (ranks under every α from one scoring pass, the valid-best α) and entity texts
built from type labels (CoDEx), with the fallback count for entities without a labelled type."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from test_text_kgc_helpers import FixedScorer, tiny_cfg, toy_kg

from kelm.kg.model import Entity, KnowledgeGraph
from kelm.kgc.text_kgc import TypeTextWarning, type_texts
from kelm.kge.evaluation import FilteredRankEvaluator
from kelm.kge.mixing import HybridScoring, best_alpha, rank_alphas


class _Counting(FixedScorer):
    """Counts the queries it scores."""

    calls = 0

    def score_t(self, h, r, candidates=None):  # noqa: ANN001, ANN201
        self.calls += len(h)
        return super().score_t(h, r, candidates)

    def score_h(self, r, t, candidates=None):  # noqa: ANN001, ANN201
        self.calls += len(t)
        return super().score_h(r, t, candidates)


@pytest.mark.parametrize("budget_mb", [256.0, 0.0002])  # one chunk; chunks of a few queries
def test_rank_alphas_equals_ranking_each_alpha_alone(budget_mb: float) -> None:
    E, R = 30, 3
    g = torch.Generator().manual_seed(0)
    triples = torch.stack(
        [
            torch.randint(0, E, (40,), generator=g),
            torch.randint(0, R, (40,), generator=g),
            torch.randint(0, E, (40,), generator=g),
        ],
        1,
    )
    ev = FilteredRankEvaluator(triples[:25], E, budget_mb)
    text, struct = _Counting(E, R, 1), _Counting(E, R, 2)
    alphas = [0.0, 0.3, 0.7, 1.0]
    got = rank_alphas(ev, text, struct, triples, alphas)
    assert text.calls == struct.calls == 2 * len(triples)  # every query scored once per scorer
    for a in alphas:
        want = ev.rank(HybridScoring(FixedScorer(E, R, 1), FixedScorer(E, R, 2), a), triples)
        assert got[a].metrics() == pytest.approx(want.metrics())
        assert torch.equal(got[a].sides.sort().values, want.sides.sort().values)
    # the ends are the scorers alone, unharmed by the ranker's in-place filtering of shared rows
    assert got[1.0].metrics() == pytest.approx(ev.rank(FixedScorer(E, R, 1), triples).metrics())
    assert got[0.0].metrics() == pytest.approx(ev.rank(FixedScorer(E, R, 2), triples).metrics())


def test_best_alpha_prefers_higher_mrr_then_smaller_alpha() -> None:
    assert best_alpha({0.0: 0.5, 0.4: 0.61, 0.8: 0.6, 1.0: 0.2}) == 0.4
    assert best_alpha({0.0: 0.7, 0.5: 0.7, 1.0: 0.1}) == 0.0
    assert best_alpha({0.0: float("nan"), 1.0: 0.3}) == 1.0


def test_type_texts_join_labels_and_count_fallbacks() -> None:
    kg = KnowledgeGraph(name="typed")
    kg.entities["Q1"] = Entity("Q1", None, None, ("Q5", "Q82955", "Q5"))
    kg.entities["Q2"] = Entity("Q2", "Ada  Lovelace", None, ())
    kg.entities["Q3"] = Entity("Q3", None, None, ("Q404",))  # a type without a label
    labels = {"Q5": "human", "Q82955": " politician "}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = type_texts(kg, ["Q1", "Q2", "Q3"], labels)
    assert texts == ["human, politician", "Ada Lovelace", "Q3"]
    ours = [w for w in caught if issubclass(w.category, TypeTextWarning)]
    assert len(ours) == 1 and "2 of 3 entities" in str(ours[0].message)


def test_task_reads_type_labels_from_a_folder(tmp_path: Path) -> None:
    """``entity_text = "types"`` with ``types_dir``: entity texts are the labels of their types."""
    from kelm.tasks.text_kgc import TextKGCTask

    kg = toy_kg(8)
    for eid, e in list(kg.entities.items()):
        kind = "T_item" if eid.startswith("item") else "T_value"
        kg.entities[eid] = Entity(e.id, e.label, e.description, (kind,) if eid != "red" else ())
    (tmp_path / "types.json").write_text('{"T_item": {"label": "object"}, "T_value": {"label": "property"}}')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = TextKGCTask(tiny_cfg(entity_text="types", types_dir=str(tmp_path)), kg=kg)
    text = dict(zip(task.tensors.entity_ids, task.texts.entities, strict=True))
    assert text["item3"] == "object" and text["square"] == "property" and text["red"] == "red"
    assert any("1 of" in str(w.message) for w in caught if issubclass(w.category, TypeTextWarning))


def test_task_without_type_labels_names_the_field() -> None:
    from kelm.errors import KelmError
    from kelm.tasks.text_kgc import TextKGCTask

    with pytest.raises(KelmError, match="types.json"):
        TextKGCTask(tiny_cfg(entity_text="types", types_dir="/nonexistent/folder"), kg=toy_kg(8))


def test_codex_s_entity_texts_from_types(data_dir: Path) -> None:
    """CoDEx-S through the registry: entity texts are Wikidata type labels, relation texts its labels."""
    if not (data_dir / "kg" / "codex-s").is_dir() or not (data_dir / "kg" / "codex-types").is_dir():
        pytest.skip("codex-s or codex-types not in KELM_DATA_DIR")
    from kelm.tasks.text_kgc import TextKGCTask

    task = TextKGCTask(tiny_cfg(dataset="codex-s", data_dir=str(data_dir), entity_text="types"))
    text = dict(zip(task.tensors.entity_ids, task.texts.entities, strict=True))
    assert len(text) == 2034 and text["Q7604"] == "human"  # Leonhard Euler
    assert "country" in text["Q739"]  # Colombia
    assert task.texts.relations[task.tensors.relation_ids.index("P106")] == "occupation"
