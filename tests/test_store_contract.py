"""One behavioural contract for every graph store that can run here (LadybugDB and FalkorDB).

Each test runs once per backend through `open_store` and checks exact expected values, so
both backends provably give the same stats, neighbours, subgraphs and exports.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kelm.errors import ReadOnlyQueryError, StoreError
from kelm.kg.model import Entity, GraphChunk, KnowledgeGraph, Provenance, Relation, Triple
from kelm.kg.store import GraphStore, open_store
from kelm.kg.store.falkordb_server import FalkorDBServer

Opener = Callable[..., GraphStore]


def small_graph() -> KnowledgeGraph:
    """a -> b -> c -> d chain plus a branch a -> e, a self-contained island x -> y."""
    kg = KnowledgeGraph(name="small")
    kg.entities["a"] = Entity("a", "Alpha", "the first", ("letter", "vowel"))
    kg.entities["b"] = Entity("b", "Beta")
    kg.entities["q"] = Entity("q", 'Quote "q" \\ back\nslash é 日本 `tick`')
    kg.relations["next"] = Relation("next", "is followed by", "order of letters")
    kg.add_triples(
        "train",
        [
            Triple("a", "next", "b", Provenance("wiki", 0.9, "2020-01-01")),
            Triple("b", "next", "c"),
            Triple("c", "next", "d", Provenance(source="book")),
            Triple("a", "branch", "e"),
        ],
    )
    kg.add_triples("valid", [Triple("x", "pair", "y", Provenance(confidence=0.25))])
    kg.add_triples("test", [Triple("d", "back", "a"), Triple("a", "next", "b")])
    return kg


def fact_multiset(kg: KnowledgeGraph) -> Counter:
    return Counter((split, t.head, t.relation, t.tail, t.provenance) for split in kg.splits for t in kg.splits[split])


def snapshot(store: GraphStore) -> tuple:
    """Everything observable: stats, entities, relations and the multiset of facts."""
    kg = store.export()
    return (
        store.stats().to_dict(),
        sorted((e.id, e.label, e.description, e.types) for e in kg.entities.values()),
        sorted((r.id, r.label, r.description) for r in kg.relations.values()),
        fact_multiset(kg),
    )


def opener(backend: str, tmp_path: Path, server: FalkorDBServer | None) -> Opener:
    """A function opening the same (fresh) store every time it is called."""
    if backend == "ladybug":
        return lambda read_only=False: open_store(tmp_path / "store", "ladybug", read_only=read_only)
    name = f"contract-{uuid.uuid4().hex[:10]}"
    return lambda read_only=False: open_store(name, "falkordb", uri=server.uri, read_only=read_only)


@pytest.fixture(params=["ladybug", "falkordb"])
def open_(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    server = request.getfixturevalue("falkordb_server") if request.param == "falkordb" else None
    return opener(request.param, tmp_path, server)


@pytest.fixture
def store(open_: Opener) -> Iterator[GraphStore]:
    with open_() as s:
        yield s


def test_import_report_and_stats(store: GraphStore) -> None:
    report = store.import_graph(small_graph())
    assert (report.entities, report.relations, report.triples) == (8, 4, 7)
    assert store.stats().to_dict() == {
        "entities": 8,
        "relations": 4,
        "triples": 7,
        "splits": {"test": 2, "train": 4, "valid": 1},
    }


def test_neighbors(store: GraphStore) -> None:
    store.import_graph(small_graph())
    facts = store.neighbors("a")
    assert [(f.head, f.relation, f.tail) for f in facts] == [
        ("a", "branch", "e"),
        ("a", "next", "b"),
        ("a", "next", "b"),
        ("d", "back", "a"),
    ]
    assert sorted(f.split for f in facts[1:3]) == ["test", "train"]
    assert [f.head for f in store.neighbors("a", "in")] == ["d"]
    assert {(f.tail, f.split) for f in store.neighbors("a", "out")} == {
        ("b", "train"),
        ("b", "test"),
        ("e", "train"),
    }
    assert len(store.neighbors("a", limit=2)) == 2
    first = next(f for f in store.neighbors("a", "out") if f.split == "train" and f.tail == "b")
    assert (first.source, first.confidence, first.time) == ("wiki", 0.9, "2020-01-01")
    assert store.neighbors("y") == [store.neighbors("x")[0]]
    with pytest.raises(StoreError, match="unknown entity"):
        store.neighbors("nope")
    with pytest.raises(StoreError, match="direction"):
        store.neighbors("a", "sideways")


def test_subgraph(store: GraphStore) -> None:
    store.import_graph(small_graph())
    sub = store.subgraph(["a"], hops=1)
    assert sub.hops == {"a": 0, "b": 1, "d": 1, "e": 1}
    assert set(sub.entities) == {"a", "b", "d", "e"} and sub.entities["a"].label == "Alpha"
    assert sorted((f.head, f.relation, f.tail) for f in sub.facts) == [
        ("a", "branch", "e"),
        ("a", "next", "b"),
        ("a", "next", "b"),
        ("d", "back", "a"),
    ]
    assert not sub.truncated
    sub2 = store.subgraph(["a"], hops=2)
    assert sub2.hops == {"a": 0, "b": 1, "d": 1, "e": 1, "c": 2}
    assert len(sub2.facts) == 6
    capped = store.subgraph(["a"], hops=2, max_entities=3)
    assert capped.truncated and capped.hops == {"a": 0, "b": 1, "d": 1}
    assert store.subgraph(["x", "a"], hops=0).hops == {"x": 0, "a": 0}
    with pytest.raises(StoreError, match="unknown entit"):
        store.subgraph(["a", "zz"])


def test_export_round_trip(store: GraphStore) -> None:
    kg = small_graph()
    store.import_graph(kg)
    out = store.export()
    assert fact_multiset(out) == fact_multiset(kg)
    assert {e.id: (e.label, e.description, e.types) for e in out.entities.values()} == {
        e.id: (e.label, e.description, e.types) for e in kg.entities.values()
    }
    assert {r.id: (r.label, r.description) for r in out.relations.values()} == {
        r.id: (r.label, r.description) for r in kg.relations.values()
    }
    assert list(out.entities) == sorted(out.entities)
    assert sorted(f.tail for f in store.iter_facts("test")) == ["a", "b"]


def test_import_into_non_empty_store_merges_text_and_creates_endpoints(store: GraphStore) -> None:
    store.import_graph(small_graph())
    more = [
        GraphChunk(entities=[Entity("b", None, "second letter"), Entity("new", "New")]),
        GraphChunk(relations=[Relation("next", None, None), Relation("fresh", "Fresh")]),
        GraphChunk(triples=[Triple("new", "fresh", "z"), Triple("b", "next", "c")], split="train"),
        GraphChunk(triples=[Triple("y", "pair", "x")]),
    ]
    report = store.import_chunks(more)
    assert (report.entities, report.relations, report.triples) == (2, 1, 3)
    ents = store.get_entities(["b", "new", "z", "missing"])
    assert set(ents) == {"b", "new", "z"}
    assert (ents["b"].label, ents["b"].description) == ("Beta", "second letter")
    assert ents["z"] == Entity("z")
    rel = {r.id: r for r in store.iter_relations()}
    assert rel["next"].label == "is followed by" and rel["fresh"].label == "Fresh"
    assert store.stats().splits == {"test": 2, "train": 6, "unsplit": 1, "valid": 1}


def test_replace_discards_old_content(store: GraphStore) -> None:
    store.import_graph(small_graph())
    kg = KnowledgeGraph()
    kg.add_triples("train", [Triple("p", "r", "q")])
    store.import_graph(kg, replace=True)
    assert store.stats().to_dict() == {"entities": 2, "relations": 1, "triples": 1, "splits": {"train": 1}}
    assert store.get_entities(["q"])["q"].label is None


def failing_chunks(kg: KnowledgeGraph) -> Iterator[GraphChunk]:
    for i, chunk in enumerate(kg.chunks(size=2)):
        if i == 2:
            raise RuntimeError("chunk source broke")
        yield chunk


@pytest.mark.parametrize("start_empty", [True, False])
def test_failed_import_leaves_store_unchanged(store: GraphStore, start_empty: bool) -> None:
    if not start_empty:
        store.import_graph(small_graph())
    before = snapshot(store)
    extra = KnowledgeGraph()
    extra.entities["a"] = Entity("a", "CHANGED")
    extra.add_triples("train", [Triple(f"n{i}", "r", f"n{i + 1}") for i in range(10)])
    with pytest.raises(RuntimeError, match="broke"):
        store.import_chunks(failing_chunks(extra))
    assert snapshot(store) == before
    with pytest.raises(RuntimeError, match="broke"):
        store.import_chunks(failing_chunks(extra), replace=True)
    assert snapshot(store) == before


def test_upserts(store: GraphStore) -> None:
    store.import_graph(small_graph())
    assert store.upsert_facts([Triple("a", "next", "b", Provenance("merged", None, "2024"))], split="train") == 1
    assert store.upsert_facts([Triple("c", "next", "new", Provenance(confidence=0.5))]) == 1
    facts = [f for f in store.iter_facts() if (f.head, f.relation, f.tail) == ("a", "next", "b")]
    # MERGE matches every copy of the triple: both get the new split and provenance.
    assert sorted(((f.split, f.source, f.confidence, f.time) for f in facts), key=repr) == [
        ("train", "merged", 0.9, "2024"),
        ("train", "merged", None, "2024"),
    ]
    stats = store.stats()
    assert (stats.entities, stats.triples, stats.splits.get("unsplit")) == (9, 8, 1)
    assert store.upsert_entities([Entity("a", None, "changed"), Entity("fresh", "Fresh", None, ("t",))]) == 2
    ents = store.get_entities(["a", "fresh"])
    assert ents["a"] == Entity("a", "Alpha", "changed", ("letter", "vowel"))
    assert ents["fresh"] == Entity("fresh", "Fresh", None, ("t",))


def test_query_is_read_only(store: GraphStore) -> None:
    store.import_graph(small_graph())
    rows = store.query("MATCH (e:Entity) WHERE e.id = $id RETURN e.id AS id, e.label AS label", {"id": "a"})
    assert rows == [{"id": "a", "label": "Alpha"}]
    counted = store.query("MATCH (:Entity)-[f:FACT]->(:Entity) WHERE f.rel = 'next' RETURN count(f) AS n")
    assert counted == [{"n": 4}]
    for text in (
        "MATCH (e:Entity) SET e.label = 'x'",
        "CREATE (:Entity {id: 'z'})",
        "MATCH (n) DETACH DELETE n",
    ):
        with pytest.raises(ReadOnlyQueryError):
            store.query(text)
    assert store.stats().entities == 8


NODE_B = {"id": "b", "label": "Beta", "types": []}
PLAIN_QUERIES = {
    # Nodes and edges are dicts of their non-null properties, the same on every backend.
    "MATCH (h:Entity)-[f:FACT]->(t:Entity) WHERE h.id = 'a' AND f.split = 'train' AND t.id = 'b' "
    "RETURN h, f, t, t.description AS missing": [
        {
            "h": {"id": "a", "label": "Alpha", "description": "the first", "types": ["letter", "vowel"]},
            "f": {"rel": "next", "split": "train", "source": "wiki", "confidence": 0.9, "time": "2020-01-01"},
            "t": NODE_B,
            "missing": None,
        }
    ],
    "MATCH p = (:Entity {id: 'c'})-[:FACT]->(:Entity) RETURN p": [
        {
            "p": {
                "nodes": [{"id": "c", "types": []}, {"id": "d", "types": []}],
                "edges": [{"rel": "next", "split": "train", "source": "book"}],
            }
        }
    ],
    "MATCH p = (:Entity {id: 'b'})-[:FACT*2..2]->(:Entity) RETURN p": [
        {
            "p": {
                "nodes": [NODE_B, {"id": "c", "types": []}, {"id": "d", "types": []}],
                "edges": [
                    {"rel": "next", "split": "train"},
                    {"rel": "next", "split": "train", "source": "book"},
                ],
            }
        }
    ],
    "MATCH (e:Entity) WHERE e.id = 'b' RETURN collect(e) AS nodes, {nodes: collect(e), n: count(e)} AS m": [
        {"nodes": [NODE_B], "m": {"nodes": [NODE_B], "n": 1}}
    ],
}


@pytest.mark.parametrize("text", list(PLAIN_QUERIES))
def test_query_returns_plain_values(store: GraphStore, text: str) -> None:
    store.import_graph(small_graph())
    assert store.query(text) == PLAIN_QUERIES[text]


def test_facts_without_split_and_split_named_unsplit_add_up(store: GraphStore) -> None:
    store.import_graph(small_graph())
    store.upsert_facts([Triple("a", "r", "b")])
    store.import_chunks([GraphChunk(triples=[Triple("b", "r", "c"), Triple("c", "r", "d")], split="unsplit")])
    stats = store.stats()
    assert (stats.triples, stats.splits) == (10, {"test": 2, "train": 4, "unsplit": 3, "valid": 1})
    assert len(store.export().splits["unsplit"]) == 3
    assert sorted(f.split or "-" for f in store.iter_facts() if f.relation == "r") == ["-", "unsplit", "unsplit"]


def test_read_only_store_rejects_writes(open_: Opener) -> None:
    with open_() as writer:
        writer.import_graph(small_graph())
        expected = snapshot(writer)
    with open_(read_only=True) as reader:
        assert snapshot(reader) == expected
        for write in (
            lambda: reader.import_graph(small_graph()),
            lambda: reader.upsert_entities([Entity("a")]),
            lambda: reader.upsert_facts([Triple("a", "r", "b")]),
            reader.clear,
        ):
            with pytest.raises(StoreError, match="read-only"):
                write()
        assert snapshot(reader) == expected


def test_clear(store: GraphStore) -> None:
    store.import_graph(small_graph())
    store.clear()
    assert store.stats().to_dict() == {"entities": 0, "relations": 0, "triples": 0, "splits": {}}
    store.import_graph(small_graph())
    assert store.stats().triples == 7


def random_graph(seed: int = 7, n: int = 3_000) -> KnowledgeGraph:
    rng = random.Random(seed)
    kg = KnowledgeGraph()
    for i in range(0, 300, 3):
        kg.entities[f"e{i}"] = Entity(f"e{i}", f"label {i}", None if i % 2 else f"desc {i}", ("t",) * (i % 2))
    for split, size in (("train", n), ("valid", n // 10), ("test", n // 10)):
        triples = []
        for _ in range(size):
            prov = None
            if rng.random() < 0.3:
                prov = Provenance(rng.choice(["s1", "s2", None]), rng.choice([0.5, None]), rng.choice(["t", None]))
            triples.append(Triple(f"e{rng.randrange(320)}", f"r{rng.randrange(12)}", f"e{rng.randrange(320)}", prov))
        kg.add_triples(split, triples)
    return kg


def test_backends_agree_on_the_same_input(tmp_path: Path, falkordb_server: FalkorDBServer) -> None:
    """The same random graph and operations give identical observations on both backends."""
    kg = random_graph()
    seen = []
    for backend in ("ladybug", "falkordb"):
        with opener(backend, tmp_path, falkordb_server)() as store:
            store.import_chunks(kg.chunks(size=500))
            store.upsert_facts([Triple("e0", "r0", "e3", Provenance("up", 1.0, None)), Triple("e1", "r99", "e2")])
            sub = store.subgraph(["e0", "e9"], hops=2, max_entities=60)
            sampled = store.subgraph(["e3"], hops=2, fanout=2, seed=5)
            seen.append(
                (
                    snapshot(store),
                    [
                        sorted(store.neighbors(f"e{i}"), key=repr)
                        for i in range(0, 320, 7)
                        if store.get_entities([f"e{i}"])
                    ],
                    (sub.hops, sub.truncated, sorted(sub.entities), Counter(sub.facts)),
                    (sampled.hops, Counter(sampled.facts)),
                    sorted(store.incident_facts(["e1", "e2", "e3"]), key=repr),
                )
            )
    assert seen[0] == seen[1]


def reference_subgraph(kg: KnowledgeGraph, seeds: list[str], hops: int) -> tuple[dict[str, int], Counter]:
    """Brute force: undirected BFS distances, then every fact with both ends reached."""
    adj: dict[str, set[str]] = {}
    facts = [t for ts in kg.splits.values() for t in ts]
    for t in facts:
        adj.setdefault(t.head, set()).add(t.tail)
        adj.setdefault(t.tail, set()).add(t.head)
    dist = {s: 0 for s in seeds}
    frontier = list(seeds)
    for hop in range(1, hops + 1):
        nxt = sorted({n for f in frontier for n in adj.get(f, ()) if n not in dist})
        dist.update({n: hop for n in nxt})
        frontier = nxt
    inside = Counter((t.head, t.relation, t.tail) for t in facts if t.head in dist and t.tail in dist)
    return dist, inside


@pytest.mark.parametrize("hops", [0, 1, 2, 3])
def test_subgraph_equals_brute_force_on_a_random_graph(open_: Opener, hops: int) -> None:
    rng = random.Random(hops)
    kg = KnowledgeGraph()
    triples = [Triple(f"e{rng.randrange(60)}", f"r{rng.randrange(4)}", f"e{rng.randrange(60)}") for _ in range(150)]
    kg.add_triples("train", triples[:120])
    kg.add_triples("test", triples[120:])
    seeds = sorted(kg.entities)[:2]
    with open_() as gs:
        gs.import_graph(kg)
        sg = gs.subgraph(seeds, hops=hops)
    dist, inside = reference_subgraph(kg, seeds, hops)
    assert sg.hops == dist
    assert Counter((f.head, f.relation, f.tail) for f in sg.facts) == inside
