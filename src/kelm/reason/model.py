"""A rules folder as a link-prediction model: ranking (rules alone, or rules + KGE) and explanations.

A rules folder (`kelm reason mine`) ranks by its rules. After ``kelm reason evaluate RULES --kge
RUN --save`` it also holds ``kge.json``: the KGE run (a path relative to the folder), the ``α``
chosen on validation and the validation curve; it then ranks by the hybrid of `kelm.kge.mixing`.
Either way each answer is explained by the rules that predict it, with the facts of one path per
rule and each fact's provenance (source, confidence, time) as the graph records it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kelm.atomic import write_text_atomic
from kelm.errors import DataError
from kelm.kg.model import KnowledgeGraph
from kelm.kge.mixing import HybridScoring, Scorer, load_structural
from kelm.reason.apply import Aggregation, RuleScorer
from kelm.reason.folder import RuleSet, folder_graph, open_folder

KGE_FILE = "kge.json"


def save_kge_choice(folder: Path, kge_run: Path, result: dict[str, Any], aggregation: str) -> Path:
    """Record in ``folder/kge.json`` the KGE run and the ``α`` that `evaluate_with_kge` chose."""
    data = {
        "kge": os.path.relpath(Path(kge_run).resolve(), Path(folder).resolve()),
        "alpha": result["alpha"],
        "aggregation": aggregation,
        "valid_mrr": {str(a): m for a, m in result["valid_mrr"].items()},
        "test": {"rules": result["rules"], "kge": result["kge"], "hybrid": result["hybrid"]},
    }
    path = Path(folder) / KGE_FILE
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")
    return path


def read_kge_choice(folder: Path) -> dict[str, Any] | None:
    """``kge.json`` of a rules folder, or None when it ranks by its rules alone."""
    path = Path(folder) / KGE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {"kge": Path(folder) / str(data["kge"]), "alpha": float(data["alpha"]),
                "aggregation": str(data.get("aggregation", "max"))}  # fmt: skip
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"corrupt rules + KGE record ({err})", path) from None


@dataclass
class Reasoner:
    """Mined rules over their graph, optionally mixed with a KGE run, with explanations."""

    rule_set: RuleSet
    rules: RuleScorer
    scoring: Scorer
    alpha: float | None = None

    @property
    def graph(self):
        return self.rule_set.graph

    @property
    def entity_ids(self) -> list[str]:
        return list(self.graph.entity_ids)

    @property
    def relation_ids(self) -> list[str]:
        return list(self.graph.relation_ids)

    @property
    def entity_labels(self) -> list[str]:
        ents = self.rule_set.kg.entities
        return [(ents[e].label if e in ents else None) or e for e in self.entity_ids]

    @property
    def relation_labels(self) -> list[str]:
        rels = self.rule_set.kg.relations
        return [(rels[r].label if r in rels else None) or r for r in self.relation_ids]

    def explain(self, entity: int, relation: int, side: str, answers: list[int], per_answer: int = 3) -> list[list]:
        """Per answer: the rules that predict it, best first, each as ``{rule, confidence, path}``
        where the path's facts carry their provenance."""
        g = self.graph
        out = []
        for found in self.rules.reasons(entity, relation, side, answers, per_answer):
            out.append([
                {"rule": s.rule.text(g), "confidence": round(c, 6), "path": [self.rule_set.fact(f) for f in facts]}
                for s, c, facts in found
            ])  # fmt: skip
        return out


def load_reasoner(folder: str | Path, kg: KnowledgeGraph | None = None, aggregation: Aggregation | None = None):
    """The model of a rules folder: over ``kg`` or the graph its ``mining.json`` names."""
    folder = Path(folder)
    rule_set = open_folder(folder, kg if kg is not None else folder_graph(folder))
    choice = read_kge_choice(folder)
    agg: Aggregation = aggregation or (choice["aggregation"] if choice else "max")  # type: ignore[assignment]
    rules = RuleScorer(rule_set.graph, rule_set.rules, agg)
    if choice is None:
        return Reasoner(rule_set, rules, rules)
    tt = rule_set.tensors
    kge = load_structural(choice["kge"], tt.entity_ids, tt.relation_ids, field=str(folder / KGE_FILE))
    return Reasoner(rule_set, rules, HybridScoring(rules, kge, choice["alpha"]), choice["alpha"])


__all__ = ["KGE_FILE", "Reasoner", "load_reasoner", "read_kge_choice", "save_kge_choice"]
