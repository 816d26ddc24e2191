"""KGQA data side: question files, the generator, evidence paths and answer-set metrics."""

from __future__ import annotations

import random

import pytest

from kelm.errors import DataError
from kelm.kg.model import KnowledgeGraph, Triple
from kelm.kgqa import GeneratorConfig, QAGraph, Question, evidence_paths, generate, write_generated
from kelm.kgqa.metrics import answer_set, hits_at_1, set_f1
from kelm.kgqa.questions import SPLITS, find_topic, parse_line, read_questions, read_split, write_questions


def tiny_kg(n_people: int = 30, seed: int = 0) -> KnowledgeGraph:
    """People live in cities and work for firms; firms sit in cities; cities lie in countries."""
    rng = random.Random(seed)
    kg = KnowledgeGraph("tiny")
    cities, countries, firms = [f"city{i}" for i in range(6)], [f"country{i}" for i in range(3)], ["acme", "globex"]
    kg.add_triples("train", [Triple(c, "located_in", rng.choice(countries)) for c in cities])
    kg.add_triples("train", [Triple(f, "based_in", rng.choice(cities)) for f in firms])
    for p in range(n_people):
        kg.add_triples("train", [Triple(f"p{p}", "lives_in", rng.choice(cities))])
        kg.add_triples("train", [Triple(f"p{p}", "works_for", rng.choice(firms))])
    for e in kg.entities.values():
        e.label = e.id.replace("p", "Person ", 1) if e.id.startswith("p") else e.id.title()
    kg.entities["globex"].label = "Acme"  # a repeated label: names must disambiguate
    for r in kg.relations.values():
        r.label = r.id.replace("_", " ")
    return kg


def brute_force(kg: KnowledgeGraph, graph: QAGraph, topic: str, path: tuple[int, ...]) -> set[str]:
    """Follow a relation path by scanning every triple at every step."""
    R = graph.num_relations
    frontier = {topic}
    for step in path:
        rel = graph.rel_ids[step % R]
        if step < R:
            frontier = {t.tail for t in kg.triples() if t.relation == rel and t.head in frontier}
        else:
            frontier = {t.head for t in kg.triples() if t.relation == rel and t.tail in frontier}
    return frontier - {topic}


@pytest.fixture(scope="module")
def kg() -> KnowledgeGraph:
    return tiny_kg()


@pytest.fixture(scope="module")
def graph(kg: KnowledgeGraph) -> QAGraph:
    return QAGraph.from_kg(kg)


def test_names_disambiguate_repeated_labels(graph: QAGraph) -> None:
    assert graph.names[graph.by_id["acme"]] == "Acme (acme)"
    assert graph.names[graph.by_id["globex"]] == "Acme (globex)"
    assert graph.find("person 3") == graph.by_id["p3"]  # case-insensitive when unique
    assert graph.find("country1") == graph.by_id["country1"]  # by id
    assert graph.find("Acme") is None


def test_generated_answers_equal_brute_force_path_following(kg: KnowledgeGraph, graph: QAGraph) -> None:
    cfg = GeneratorConfig(hops=(1, 2, 3), per_entity=3, max_answers=50, seed=1)
    gen = generate(graph, cfg)
    total = 0
    for (_, k), rows in gen.questions.items():
        for row in rows:
            assert len(row.path) == k
            expected = brute_force(kg, graph, graph.ids[row.topic], row.path)
            assert {graph.ids[a] for a in row.answers} == expected
            assert set(row.question.answers) == {graph.names[graph.by_id[e]] for e in expected}
            assert 0 < len(expected) <= cfg.max_answers
            assert find_topic(row.question.text) == graph.names[row.topic] == row.question.topic
            total += 1
    assert total > 100
    assert all(gen.questions[(s, k)] for s in SPLITS for k in (1, 2, 3))


def test_split_by_topic_is_disjoint_and_generation_deterministic(graph: QAGraph, tmp_path) -> None:
    cfg = GeneratorConfig(hops=(1, 2), per_entity=2, seed=3)
    gen = generate(graph, cfg)
    topics = {s: {r.topic for k in (1, 2) for r in gen.questions[(s, k)]} for s in SPLITS}
    assert not topics["train"] & topics["dev"] and not topics["train"] & topics["test"]
    assert not topics["dev"] & topics["test"]
    write_generated(tmp_path / "a", graph, gen, cfg)
    write_generated(tmp_path / "b", graph, generate(graph, cfg), cfg)
    for name in ("train_1hop.txt", "dev_2hop.txt", "test_2hop.txt", "entities.tsv", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = generate(graph, GeneratorConfig(hops=(1, 2), per_entity=2, seed=4))
    assert [r.question for r in other.questions[("train", 2)]] != [r.question for r in gen.questions[("train", 2)]]
    # templates: several phrasings per hop count
    texts = [r.question.text for r in gen.questions[("train", 2)]]
    assert len({t.split()[0] for t in texts}) >= 3


def test_file_round_trip_and_bad_lines(tmp_path) -> None:
    qs = [
        Question("what is the capital of [France]", "France", ("Paris",), 1),
        Question("[Douglas Adams]'s employer's city?", "Douglas Adams", ("London", "Cambridge"), 1),
    ]
    path = tmp_path / "train_1hop.txt"
    assert write_questions(path, qs) == 2
    back = read_questions(path)
    assert [(q.text, q.topic, q.answers, q.hops) for q in back] == [(q.text, q.topic, q.answers, 1) for q in qs]
    assert [q.line for q in back] == [1, 2]
    assert read_split(tmp_path, "train", [1, 2]) == back
    assert back[0].masked() == "what is the capital of the entity"

    bad = {
        "no tab here": "expected 2 tab-separated columns",
        "what is [A] and [B]\tx": "exactly one \\[topic entity\\]",
        "what is this\tx": "exactly one \\[topic entity\\]",
        "what is [A]\t": "empty answer",
        "what is [A]\tx||y": "empty answer",
    }
    for line, message in bad.items():
        f = tmp_path / "dev_1hop.txt"
        f.write_text("what is [A]\tx\n\n" + line + "\n", encoding="utf-8")
        with pytest.raises(DataError, match=message) as err:
            read_questions(f)
        assert str(err.value).startswith(f"{f}:3: ")
    with pytest.raises(DataError, match="dev_1hop.txt:3"):
        parse_line("a\tb\tc", tmp_path / "dev_1hop.txt", 3)


def test_evidence_paths_are_real_paths(kg: KnowledgeGraph, graph: QAGraph) -> None:
    facts = {
        (graph.names[graph.by_id[t.head]], kg.relations[t.relation].label, graph.names[graph.by_id[t.tail]])
        for t in kg.triples()
    }
    gen = generate(graph, GeneratorConfig(hops=(1, 2, 3), per_entity=2, seed=0))
    checked = 0
    for rows in gen.questions.values():
        for row in rows[:20]:
            for a in row.answers[:3]:
                paths = evidence_paths(graph, row.topic, a, max_hops=3)
                assert paths, "an answer within 3 hops has a path"
                for p in paths:
                    assert 1 <= len(p) <= len(row.path)
                    assert all(t in facts for t in p)
                    # consecutive triples share an entity, starting at the topic and ending at the answer
                    at = graph.names[row.topic]
                    for h, _, t in p:
                        assert at in (h, t)
                        at = t if at == h else h
                    assert at == graph.names[a]
                checked += 1
    assert checked > 50
    # restricted to a node set without a bridge, there is no path
    p0, country = graph.by_id["p0"], graph.by_id[next(t.tail for t in kg.triples() if t.relation == "located_in")]
    assert evidence_paths(graph, p0, country, within=[p0, country]) == []


def test_evidence_paths_exclude_equals_the_graph_without_those_facts(graph: QAGraph) -> None:
    checked = 0
    for fact in graph.triples[:: max(1, len(graph.triples) // 40)]:
        others = QAGraph(
            graph.ids, graph.names, graph.rel_ids, graph.rel_names, [x for x in graph.triples if x != fact]
        )
        want = evidence_paths(others, fact[0], fact[2], max_hops=3, limit=5)
        assert evidence_paths(graph, fact[0], fact[2], max_hops=3, limit=5, exclude={fact}) == want
        assert evidence_paths(graph, fact[0], fact[2], max_hops=3, limit=5) != want or not want or fact[0] == fact[2]
        checked += 1
    assert checked >= 20


def test_metrics_against_hand_computed_cases() -> None:
    assert hits_at_1("a", {"a", "b"}) == 1.0
    assert hits_at_1("c", {"a", "b"}) == 0.0
    assert hits_at_1(None, {"a"}) == 0.0
    # predicted {a, c} vs gold {a, b, d}: precision 1/2, recall 1/3, F1 = 2 * (1/6) / (5/6) = 0.4
    assert set_f1({"a", "c"}, {"a", "b", "d"}) == pytest.approx(0.4)
    assert set_f1({"a"}, {"a"}) == 1.0
    assert set_f1(set(), {"a"}) == 0.0
    assert set_f1({"x"}, {"a"}) == 0.0
    # the top entity, then those with probability >= threshold * top
    assert answer_set([1, 2, 3, 4], [0.1, 0.5, 0.3, 0.1], 0.5) == [2, 3]
    assert answer_set([1, 2, 3, 4], [0.1, 0.5, 0.3, 0.1], 1.0) == [2]
    assert answer_set([1, 2, 3, 4], [0.1, 0.5, 0.3, 0.1], 0.1) == [2, 3, 1, 4]
    assert answer_set([], [], 0.5) == []


def test_followed_paths_trace_the_attended_relations_not_the_shortest_path() -> None:
    """T -r1-> A -r2-> X and T -r3-> X: with hop attention on r1 then r2, the evidence for X is the
    2-fact path the score travelled, though a 1-fact path exists; backward steps read as facts."""
    import torch

    from kelm.kgqa.evidence import followed_paths

    kg = KnowledgeGraph("tri")
    kg.add_triples(
        "train", [Triple("T", "r1", "A"), Triple("A", "r2", "X"), Triple("T", "r3", "X"), Triple("B", "r2", "A")]
    )
    g = QAGraph.from_kg(kg)
    R, (t, a, b, x) = g.num_relations, (g.by_id[e] for e in ("T", "A", "B", "X"))
    nodes = [t, a, b, x]
    pos = {e: i for i, e in enumerate(nodes)}
    edges = []
    for h, r, tl in g.triples:
        edges += [(pos[h], r, pos[tl]), (pos[tl], r + R, pos[h])]
    r1, r2, r3 = (g.rel_ids.index(r) for r in ("r1", "r2", "r3"))
    attention = torch.full((2, 2 * R), 0.01)
    attention[0, r1] = attention[1, r2] = 0.9
    scores = torch.zeros(2, 4)
    for u, step, v in edges:  # hop 1 from the topic, then hop 2
        scores[0, v] += float(u == 0) * attention[0, step]
    for u, step, v in edges:
        scores[1, v] += scores[0, u] * attention[1, step]
    assert evidence_paths(g, t, x) == [[("T", "r3", "X")]]
    assert followed_paths(g, nodes, edges, scores, attention, 2, pos[x], limit=3) == [
        [("T", "r1", "A"), ("A", "r2", "X")]  # the only 2-hop walk to X
    ]
    assert followed_paths(g, nodes, edges, scores, attention, 1, pos[x], limit=3) == [[("T", "r3", "X")]]
    # B is reached at hop 2 by walking r2 backward from A: the fact keeps its own direction
    assert followed_paths(g, nodes, edges, scores, attention, 2, pos[b], limit=1) == [
        [("T", "r1", "A"), ("B", "r2", "A")]
    ]
