"""A rules folder: ``rules.tsv`` plus ``mining.json`` (where the graph came from, settings, counts).

`mine_folder` mines a graph's training facts into one; `open_folder` reads it back against the
same graph, for `evaluate` (filtered ranks, the evaluator KGE runs use) and `predict`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kelm.atomic import write_text_atomic
from kelm.errors import ConfigError, DataError
from kelm.kg.datasets import is_store_folder, load_graph, store_graph
from kelm.kg.model import KnowledgeGraph, provenance_fields
from kelm.kg.tensors import TripleTensors
from kelm.reason.apply import Aggregation, RuleScorer
from kelm.reason.graph import RuleGraph
from kelm.reason.mining import MiningConfig, mine
from kelm.reason.rules import ScoredRule, load_rules, save_rules

RULES_FILE, MINING_FILE = "rules.tsv", "mining.json"


def graph_source(dataset: str | None, store: str | Path | None) -> KnowledgeGraph:
    """The graph a command names: ``--dataset`` (a registered set or triple files) or ``--store``."""
    if (dataset is None) == (store is None):
        raise ConfigError("give exactly one of --dataset and --store")
    if store is not None:
        path = Path(store)
        if not is_store_folder(path):
            raise DataError("not an embedded store folder", path)
        return store_graph(path)
    # held-out facts naming an entity train lacks are kept and ranked, as KGE runs do (LibKGE)
    return load_graph(dataset, unseen="keep")  # type: ignore[arg-type]


@dataclass
class RuleSet:
    """Mined rules over one graph's training facts (``graph``, built from ``kg``'s train split)."""

    graph: RuleGraph
    tensors: TripleTensors
    rules: list[ScoredRule]
    kg: KnowledgeGraph
    _provenance: dict[tuple[str, str, str], Any] | None = None

    def fact(self, row: int) -> dict[str, Any]:
        """Fact ``row`` of ``graph.facts``: its ids and the provenance the graph records for it."""
        if self._provenance is None:
            self._provenance = {t.key(): t.provenance for t in self.kg.splits.get("train", ())}
        h, r, t = self.graph.fact_ids(row)
        return {"head": h, "relation": r, "tail": t} | provenance_fields(self._provenance.get((h, r, t)))


def index_graph(kg: KnowledgeGraph) -> tuple[RuleGraph, TripleTensors]:
    tt = TripleTensors.from_graph(kg)
    if "train" not in tt.triples or not len(tt.triples["train"]):
        raise DataError(f"graph '{kg.name}' has no training facts to mine rules from")
    return RuleGraph(tt.triples["train"].numpy(), tt.entity_ids, tt.relation_ids), tt


def mine_folder(
    kg: KnowledgeGraph, out: Path, config: MiningConfig, source: dict[str, str], relations: list[str] | None = None
) -> dict[str, Any]:
    """Mine ``kg``'s training facts (rules for ``relations``, else for all) into ``out``; returns
    what ``mining.json`` records."""
    config.check()
    graph, _ = index_graph(kg)
    start = time.monotonic()
    rules = mine(graph, config, relations)
    seconds = time.monotonic() - start
    kinds = Counter(s.rule.kind for s in rules)
    info = {"source": source, "config": asdict(config), "seconds": round(seconds, 2), "rules": len(rules)}
    info |= {"by_kind": dict(sorted(kinds.items())), "relations_with_rules": len({s.rule.head for s in rules})}
    save_rules(out / RULES_FILE, rules, graph, {"source": source})
    write_text_atomic(out / MINING_FILE, json.dumps(info, indent=1) + "\n")
    return info


def folder_source(folder: Path) -> dict[str, str]:
    """The graph a rules folder was mined from, as recorded in its ``mining.json``."""
    path = folder / MINING_FILE
    if not path.is_file():
        raise DataError(f"not a rules folder (no {MINING_FILE}; make one with `kelm reason mine`)", folder)
    try:
        return json.loads(path.read_text(encoding="utf-8"))["source"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError("corrupt mining record", path) from None


def folder_graph(folder: Path, dataset: str | None = None, store: str | Path | None = None) -> KnowledgeGraph:
    """The graph given by ``dataset`` or ``store``, else the one the rules folder was mined from."""
    if dataset is None and store is None:
        source = folder_source(folder)
        dataset, store = source.get("dataset"), source.get("store")
    return graph_source(dataset, store)


def open_folder(folder: Path, kg: KnowledgeGraph) -> RuleSet:
    graph, tt = index_graph(kg)
    return RuleSet(graph, tt, load_rules(folder / RULES_FILE, graph), kg)


def split_by_relation(tt: TripleTensors, split: str) -> torch.Tensor:
    """A split's facts ordered by relation, so that each relation's queries share the rules' work."""
    if split not in tt.triples:
        raise ConfigError(f"the graph has no '{split}' split (it has: {', '.join(sorted(tt.triples))})")
    triples = tt.triples[split]
    return triples[torch.argsort(triples[:, 1], stable=True)]


def evaluate(rule_set: RuleSet, split: str = "test", aggregation: Aggregation = "max") -> dict[str, float]:
    """Filtered MRR, MR and Hits@k of ``split``'s facts, tail and head queries."""
    from kelm.kge.evaluation import FilteredRankEvaluator

    tt = rule_set.tensors
    known = torch.cat(list(tt.triples.values()))
    triples = split_by_relation(tt, split)
    scorer = RuleScorer(rule_set.graph, rule_set.rules, aggregation)
    return FilteredRankEvaluator(known, tt.num_entities).evaluate(scorer, triples)


def predict(
    reasoner: Any, relation: str, head: str | None = None, tail: str | None = None, k: int = 10
) -> dict[str, Any]:
    """Top-``k`` answers of ``(head, relation, ?)`` or ``(?, relation, tail)`` ranked by a
    `kelm.reason.model.Reasoner` (rules, or rules + KGE), each with the rules that predict it and
    one path of facts per rule, with their provenance."""
    if (head is None) == (tail is None):
        raise ConfigError("give exactly one of --head (rank tails) and --tail (rank heads)")
    g = reasoner.graph
    given = head if head is not None else tail
    if given not in g.entity_ids:
        raise ConfigError(f"unknown entity '{given}'")
    if relation not in g.relation_ids:
        raise ConfigError(f"unknown relation '{relation}'")
    side = "tail" if head is not None else "head"
    e, r = torch.tensor([g.entity_ids.index(given)]), torch.tensor([g.relation_ids.index(relation)])
    with torch.no_grad():
        scores = (reasoner.scoring.score_t(e, r) if side == "tail" else reasoner.scoring.score_h(r, e))[0]
    if reasoner.alpha is None:  # rules alone: only what some rule predicts
        k = min(k, int((scores > 0).sum()))
    values, order = scores.double().topk(min(k, len(scores)))
    answers = order.tolist()
    why = reasoner.explain(int(e), int(r), side, answers)
    found = [
        {"rank": rank, "id": g.entity_ids[a], "score": float(v), "rules": w}
        for rank, (a, v, w) in enumerate(zip(answers, values.tolist(), why, strict=True), start=1)
    ]
    return {"head": head, "relation": relation, "tail": tail, "alpha": reasoner.alpha, "answers": found}
