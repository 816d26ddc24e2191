"""Rule mining and application: counts equal brute force, rules rank real test facts, files round-trip."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kelm.errors import ConfigError, DataError
from kelm.reason import MiningConfig, Rule, RuleGraph, RuleScorer, mine
from kelm.reason.counts import score_rule
from kelm.reason.rules import load_rules, save_rules


def small_graph(facts: list[tuple[int, int, int]], entities: int, relations: int) -> RuleGraph:
    return RuleGraph(np.array(facts, dtype=np.int64).reshape(-1, 3), [f"e{i}" for i in range(entities)],
                     [f"r{i}" for i in range(relations)])  # fmt: skip


def holds(graph: RuleGraph, u: int, step: tuple[int, bool], v: int) -> bool:
    rel, inverse = step
    return graph.has_fact(v, rel, u) if inverse else graph.has_fact(u, rel, v)


def path_exists(graph: RuleGraph, start: int, body, end: int | None, avoid: int | None = None) -> bool:
    """Brute force over every binding of the intermediate variables (and the end, when None)
    except ``avoid``."""
    n = graph.num_entities
    for middle in itertools.product([v for v in range(n) if v != avoid], repeat=len(body) - 1):
        ends = [v for v in range(n) if v != avoid] if end is None else [end]
        for last in ends:
            nodes = [start, *middle, last]
            if all(holds(graph, nodes[i], body[i], nodes[i + 1]) for i in range(len(body))):
                return True
    return False


def brute_force(graph: RuleGraph, rule: Rule) -> tuple[int, int, int]:
    """(support, body groundings, PCA body) by enumerating every binding of the head variables."""
    n, r = graph.num_entities, rule.head
    support = body = pca = 0
    if rule.kind == "cyclic":
        for x, y in itertools.product(range(n), repeat=2):
            if x != y and path_exists(graph, x, rule.body, y):
                body += 1
                support += graph.has_fact(x, r, y)
                pca += any(graph.has_fact(x, r, z) for z in range(n))
        return support, body, pca
    c = rule.head_constant
    for v in range(n):
        if v == c or not path_exists(graph, v, rule.body, rule.body_constant, avoid=c):
            continue
        body += 1
        if rule.anchor == "head":
            support += graph.has_fact(v, r, c)
            pca += any(graph.has_fact(v, r, z) for z in range(n))
        else:
            support += graph.has_fact(c, r, v)
            pca += any(graph.has_fact(z, r, v) for z in range(n))
    return support, body, pca


steps = st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=1, max_size=3).map(tuple)


@st.composite
def graphs_and_rules(draw):
    n = draw(st.integers(3, 6))
    facts = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 2), st.integers(0, n - 1)), max_size=25))
    graph = small_graph(facts, n, 3)
    kind = draw(st.sampled_from(["cyclic", "ac1", "ac2"]))
    head, body = draw(st.integers(0, 2)), draw(steps)
    if kind == "cyclic":
        return graph, Rule(head, body)
    constant = draw(st.integers(0, n - 1))
    end = draw(st.integers(0, n - 1)) if kind == "ac1" else None
    return graph, Rule(head, body, kind, draw(st.sampled_from(["head", "tail"])), constant, end)


@settings(max_examples=300, deadline=None)
@given(graphs_and_rules())
def test_counts_equal_brute_force(case) -> None:
    graph, rule = case
    s = score_rule(graph, rule)
    assert not s.sampled
    assert (s.support, s.body_groundings, s.pca_body) == brute_force(graph, rule)


def test_trivial_rules_are_recognised() -> None:
    assert Rule(0, ((0, False),)).trivial
    assert not Rule(0, ((0, True),)).trivial  # symmetry is a real rule
    assert Rule(0, ((0, False),), "ac1", "head", 3, 3).trivial
    assert Rule(0, ((0, True),), "ac1", "tail", 3, 3).trivial
    assert not Rule(0, ((0, False),), "ac1", "head", 3, 4).trivial


def family_graph() -> RuleGraph:
    """parent/child inverse pairs and a married relation: rules that must be found."""
    facts = []
    rels = ["parent", "child", "married"]
    for fam in range(12):
        p, q, kids = 4 * fam, 4 * fam + 1, (4 * fam + 2, 4 * fam + 3)
        facts.append((p, 2, q))
        for k in kids:
            facts += [(p, 0, k), (k, 1, p), (q, 0, k), (k, 1, q)]
    return RuleGraph(np.array(facts), [f"e{i}" for i in range(48)], rels)


def test_mining_finds_the_inverse_rule_and_stops_when_saturated() -> None:
    graph = family_graph()
    rules = mine(graph, MiningConfig(seconds=30, saturation_window=2_000))
    best = {s.rule: s for s in rules}
    inverse = Rule(1, ((0, True),))  # child(X, Y) <= parent(Y, X)
    assert best[inverse].confidence == 1.0 and best[inverse].support == 48
    assert all(not s.rule.trivial for s in rules)
    assert all(s.support >= 2 for s in rules)


def test_bad_mining_input_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="positive"):
        mine(family_graph(), MiningConfig(seconds=0))
    with pytest.raises(DataError, match="no facts"):
        mine(small_graph([], 3, 1), MiningConfig(seconds=1))


def test_rules_file_round_trip_and_refusals(tmp_path: Path) -> None:
    graph = family_graph()
    rules = mine(graph, MiningConfig(seconds=10, saturation_window=1_000))
    path = tmp_path / "rules.tsv"
    save_rules(path, rules, graph)
    again = load_rules(path, graph)
    assert {s.rule for s in again} == {s.rule for s in rules}
    by_rule = {s.rule: s for s in rules}
    for s in again:
        assert s.support == by_rule[s.rule].support
        assert s.confidence == pytest.approx(by_rule[s.rule].confidence, rel=1e-5)
    other = small_graph([(0, 0, 1)], 2, 1)
    with pytest.raises(DataError, match=r"rules.tsv:1: these rules were mined on another graph"):
        load_rules(path, other)
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace("\t", " ", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"rules.tsv:5: bad rule"):
        load_rules(path, graph)


def test_every_rule_backed_answer_has_a_grounded_path_in_the_graph() -> None:
    graph = family_graph()
    rules = mine(graph, MiningConfig(seconds=10, saturation_window=1_000))
    scorer = RuleScorer(graph, rules)
    facts = {tuple(f) for f in graph.facts.tolist()}
    checked = 0
    for entity in range(0, 48, 5):
        for rel in range(3):
            for side in ("tail", "head"):
                for ex in scorer.explain(entity, rel, side, k=5):
                    assert ex.rules, "an answer with a positive score comes from some rule"
                    for _, _, path in ex.rules:
                        assert all(tuple(graph.facts[f].tolist()) in facts for f in path)
                        checked += 1
    assert checked > 50


def test_rules_rank_umls_test_facts_far_above_chance(data_dir: Path) -> None:
    from kelm.kg.datasets import load_graph
    from kelm.kg.tensors import TripleTensors
    from kelm.kge.evaluation import FilteredRankEvaluator

    tt = TripleTensors.from_graph(load_graph("umls", data_dir))
    graph = RuleGraph(tt.triples["train"].numpy(), tt.entity_ids, tt.relation_ids)
    rules = mine(graph, MiningConfig(seconds=8, workers=2))
    known = torch.cat(list(tt.triples.values()))
    test = tt.triples["test"][:300]
    metrics = FilteredRankEvaluator(known, tt.num_entities).evaluate(RuleScorer(graph, rules), test)
    assert metrics["mrr"] > 0.8 and metrics["hits@10"] > 0.95  # chance: MRR about 0.04


def kelm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kelm.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_mines_evaluates_and_explains_kinship(tmp_path: Path, data_dir: Path) -> None:
    rules = tmp_path / "rules"
    done = kelm("reason", "mine", "--dataset", "kinship", "--seconds", "6", "--workers", "2", "--out", str(rules))
    assert done.returncode == 0, done.stderr
    assert (rules / "rules.tsv").is_file() and json.loads((rules / "mining.json").read_text())["rules"] > 1000
    done = kelm("reason", "evaluate", str(rules), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["mrr"] > 0.4  # chance on 104 entities: about 0.05
    done = kelm("reason", "predict", str(rules), "-r", "term7", "--head", "person0", "--top", "3", "--json")
    answers = json.loads(done.stdout)["answers"]
    assert answers and all(a["rules"] and all(r["path"] for r in a["rules"]) for a in answers)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mine", "--dataset", "kinship", "--seconds", "0", "--out", "x"], "time budget must be positive"),
        (["mine", "--out", "x"], "exactly one of --dataset and --store"),
        (["evaluate", "no-such-folder"], "not a rules folder"),
        (["evaluate", ".", "--save"], "give the KGE run with --kge"),
        (["mine", "--dataset", "graph", "-r", "r2", "--out", "x"], "relation 'r2' has no facts to mine rules from"),
        (["mine", "--dataset", "graph", "-r", "r9", "--out", "x"], "unknown relation 'r9'"),
        (["mine", "--dataset", "kinship", "--max-acyclic-length", "4", "--out", "x"], "rule lengths"),
    ],
)
def test_cli_bad_input_is_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "graph").mkdir()
    (tmp_path / "graph" / "train.txt").write_text("a\tr1\tb\nb\tr1\tc\n", encoding="utf-8")
    (tmp_path / "graph" / "valid.txt").write_text("a\tr2\tc\n", encoding="utf-8")  # r2: no training facts
    (tmp_path / "graph" / "test.txt").write_text("a\tr1\tc\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "kelm.cli", "reason", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)  # fmt: skip
    assert done.returncode != 0
    assert message in done.stderr and "Traceback" not in done.stderr


def test_rules_and_complex_hybrid_beats_both_on_umls(tmp_path: Path, data_dir: Path) -> None:
    """The α chosen on validation gives a test MRR above the rules alone and ComplEx alone."""
    from kelm.app import run_training
    from kelm.config import read_toml
    from kelm.kg.datasets import load_graph
    from kelm.kge.evaluation import FilteredRankEvaluator
    from kelm.reason.folder import mine_folder, open_folder, predict, split_by_relation
    from kelm.reason.hybrid import evaluate_with_kge
    from kelm.reason.model import load_reasoner, save_kge_choice

    config = read_toml(Path(__file__).parents[1] / "configs" / "kge" / "umls-complex.toml")
    config["train"] |= {"tensorboard": False}
    run_training(config, tmp_path / "complex")
    kg = load_graph("umls", data_dir)
    mine_folder(kg, tmp_path / "rules", MiningConfig(seconds=8, workers=2), {"dataset": "umls"})
    rule_set = open_folder(tmp_path / "rules", kg)
    result = evaluate_with_kge(rule_set, tmp_path / "complex")
    assert 0 < result["alpha"] < 1
    assert result["hybrid"]["mrr"] > max(result["rules"]["mrr"], result["kge"]["mrr"]) + 0.01

    # saved, the folder ranks by the hybrid: the same test MRR, and answers explained by rules
    save_kge_choice(tmp_path / "rules", tmp_path / "complex", result, "max")
    reasoner = load_reasoner(tmp_path / "rules", kg)
    tt = rule_set.tensors
    evaluator = FilteredRankEvaluator(torch.cat(list(tt.triples.values())), tt.num_entities)
    again = evaluator.evaluate(reasoner.scoring, split_by_relation(tt, "test"))
    assert again["mrr"] == pytest.approx(result["hybrid"]["mrr"], abs=1e-6)
    h, r, _ = rule_set.graph.fact_ids(0)
    found = predict(reasoner, r, head=h, k=5)
    assert found["alpha"] == result["alpha"] and len(found["answers"]) == 5
    assert any(a["rules"] for a in found["answers"])


def test_each_kind_keeps_its_best_rules_under_the_cap() -> None:
    from kelm.reason.rules import ScoredRule

    narrow = [ScoredRule(Rule(0, ((1, False),), "ac1", "head", 0, d), 9, 9, 9) for d in range(2, 6)]
    general = ScoredRule(Rule(0, ((1, False),)), 50, 100, 100)
    dangling = ScoredRule(Rule(0, ((1, False),), "ac2", "head", 0), 30, 90, 90)
    scorer = RuleScorer(small_graph([(0, 1, 1)], 6, 2), [*narrow, general, dangling], max_rules_per_kind=2)
    kept = scorer.rules[0]
    assert [s.rule.kind for s in kept] == ["ac1", "ac1", "cyclic", "ac2"]  # best first across kinds
    assert general in kept and dangling in kept
