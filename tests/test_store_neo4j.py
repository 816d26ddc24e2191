"""Neo4j store adapter, tested against a FAKE driver.

No Neo4j server can run on this machine, so `neo4j.GraphDatabase.driver` is replaced by a
small in-memory fake of the driver/session/transaction API the adapter uses. The fake
interprets exactly the shared statements of `kelm.kg.store.cypher` (anything else is an
error), works on a copy of its state inside a transaction, and only publishes that copy on
commit. The tests check that the adapter sends the shared Cypher with the right parameters,
commits on success, rolls back on failure, and reads through read transactions. They do not
prove that a real Neo4j server accepts the statements.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import neo4j
import pytest
from neo4j.exceptions import ConstraintError, Neo4jError, ServiceUnavailable
from neo4j.graph import Graph, Node, Path

from kelm.errors import ReadOnlyQueryError, StoreError
from kelm.kg.model import Entity, GraphChunk, KnowledgeGraph, Provenance, Relation, Triple
from kelm.kg.store import cypher, open_store
from kelm.kg.store.base import triple_rows
from kelm.kg.store.neo4j import CONSTRAINTS, Neo4jStore

# -- the fake -------------------------------------------------------------------------------


@dataclass
class State:
    entities: dict[str, dict[str, Any]] = field(default_factory=dict)
    relations: dict[str, dict[str, Any]] = field(default_factory=dict)
    facts: list[dict[str, Any]] = field(default_factory=list)


def _fact_row(f: dict[str, Any]) -> dict[str, Any]:
    return {
        "head": f["h"],
        "relation": f["rel"],
        "tail": f["t"],
        **{k: f.get(k) for k in ("split", "source", "confidence", "time")},
    }


def _entity_row(e: dict[str, Any]) -> dict[str, Any]:
    return {k: e.get(k) for k in ("id", "label", "description", "types")}


def _create_entities(s: State, p: dict) -> list:
    for row in p["rows"]:
        if row["id"] in s.entities:
            raise ConstraintError(f"Node already exists with label `Entity` and property `id` = '{row['id']}'")
        s.entities[row["id"]] = {k: v for k, v in row.items() if v is not None}
    return []


def _merge_entities(s: State, p: dict) -> list:
    for row in p["rows"]:
        e = s.entities.setdefault(row["id"], {"id": row["id"]})
        for k in ("label", "description"):
            if row[k] is not None:
                e[k] = row[k]
        if row["types"]:
            e["types"] = row["types"]
    return []


def _create_relations(s: State, p: dict) -> list:
    for row in p["rows"]:
        if row["id"] in s.relations:
            raise ConstraintError(f"Node already exists with label `Relation` and property `id` = '{row['id']}'")
        s.relations[row["id"]] = {k: v for k, v in row.items() if v is not None}
    return []


def _merge_relations(s: State, p: dict) -> list:
    for row in p["rows"]:
        r = s.relations.setdefault(row["id"], {"id": row["id"]})
        for k in ("label", "description"):
            if row[k] is not None:
                r[k] = row[k]
    return []


def _create_facts(s: State, p: dict) -> list:
    for row in p["rows"]:
        if row["h"] in s.entities and row["t"] in s.entities:
            s.facts.append({"h": row["h"], "t": row["t"], "rel": row["r"], **_props(row)})
    return []


def _merge_facts(s: State, p: dict) -> list:
    for row in p["rows"]:
        if row["h"] not in s.entities or row["t"] not in s.entities:
            continue
        found = [f for f in s.facts if (f["h"], f["rel"], f["t"]) == (row["h"], row["r"], row["t"])]
        if not found:
            found = [{"h": row["h"], "t": row["t"], "rel": row["r"]}]
            s.facts.append(found[0])
        for f in found:
            f.update({k: v for k, v in _props(row).items() if v is not None})
    return []


def _props(row: dict) -> dict:
    return {k: row[k] for k in ("split", "source", "confidence", "time")}


def _merge_ids(target: str) -> Callable[[State, dict], list]:
    def run(s: State, p: dict) -> list:
        for i in p["ids"]:
            getattr(s, target).setdefault(i, {"id": i})
        return []

    return run


def _delete_all(s: State, p: dict) -> list:
    s.entities.clear()
    s.relations.clear()
    s.facts.clear()
    return []


def _count_splits(s: State, p: dict) -> list:
    counts: dict[str | None, int] = {}
    for f in s.facts:
        counts[f.get("split")] = counts.get(f.get("split"), 0) + 1
    return [{"split": k, "n": n} for k, n in counts.items()]


HANDLERS: dict[str, Callable[[State, dict], list]] = {
    **{c: (lambda s, p: []) for c in CONSTRAINTS},
    cypher.ENTITY_IDS: lambda s, p: [{"id": i} for i in s.entities],
    cypher.RELATION_IDS: lambda s, p: [{"id": i} for i in s.relations],
    cypher.CREATE_ENTITIES: _create_entities,
    cypher.MERGE_ENTITIES: _merge_entities,
    cypher.CREATE_RELATIONS: _create_relations,
    cypher.MERGE_RELATIONS: _merge_relations,
    cypher.CREATE_FACTS: _create_facts,
    cypher.MERGE_FACTS: _merge_facts,
    cypher.MERGE_ENDPOINTS: _merge_ids("entities"),
    cypher.MERGE_RELATION_IDS: _merge_ids("relations"),
    cypher.DELETE_ALL: _delete_all,
    cypher.COUNT_ENTITIES: lambda s, p: [{"n": len(s.entities)}],
    cypher.COUNT_RELATIONS: lambda s, p: [{"n": len(s.relations)}],
    cypher.COUNT_SPLITS: _count_splits,
    cypher.ENTITIES_BY_ID: lambda s, p: [_entity_row(s.entities[i]) for i in p["ids"] if i in s.entities],
    cypher.ALL_ENTITIES: lambda s, p: [_entity_row(s.entities[i]) for i in sorted(s.entities)],
    cypher.ALL_RELATIONS: lambda s, p: [
        {k: s.relations[i].get(k) for k in ("id", "label", "description")} for i in sorted(s.relations)
    ],
    cypher.ALL_FACTS: lambda s, p: [_fact_row(f) for f in s.facts],
    cypher.SPLIT_FACTS: lambda s, p: [_fact_row(f) for f in s.facts if f.get("split") == p["split"]],
    cypher.OUT_FACTS: lambda s, p: [_fact_row(f) for f in s.facts if f["h"] in p["ids"]],
    cypher.IN_FACTS: lambda s, p: [_fact_row(f) for f in s.facts if f["t"] in p["ids"] and f["h"] not in p["ids"]],
    cypher.INNER_FACTS: lambda s, p: [_fact_row(f) for f in s.facts if f["h"] in p["ids"] and f["t"] in p["ids"]],
    cypher.OUT_NEIGHBORS: lambda s, p: [
        {"src": h, "dst": t} for h, t in dict.fromkeys((f["h"], f["t"]) for f in s.facts if f["h"] in p["ids"])
    ],
    cypher.IN_NEIGHBORS: lambda s, p: [
        {"src": t, "dst": h} for t, h in dict.fromkeys((f["t"], f["h"]) for f in s.facts if f["t"] in p["ids"])
    ],
}
WRITES = set(CONSTRAINTS) | {
    cypher.CREATE_ENTITIES,
    cypher.MERGE_ENTITIES,
    cypher.CREATE_RELATIONS,
    cypher.MERGE_RELATIONS,
    cypher.CREATE_FACTS,
    cypher.MERGE_FACTS,
    cypher.MERGE_ENDPOINTS,
    cypher.MERGE_RELATION_IDS,
    cypher.DELETE_ALL,
}


class Record:
    def __init__(self, row: dict[str, Any]):
        self._row = row

    def data(self) -> dict[str, Any]:
        return dict(self._row)

    def items(self) -> list[tuple[str, Any]]:
        return list(self._row.items())


class Result:
    def __init__(self, rows: list[dict[str, Any]]):
        self._records = [Record(r) for r in rows]

    def __iter__(self) -> Iterator[Record]:
        return iter(self._records)

    def consume(self) -> None:
        self._records = []


@dataclass
class Call:
    kind: str  # "auto", "explicit", "read" or "write": how the transaction was opened
    mode: str
    query: str
    params: dict[str, Any]


class FakeServer:
    """What the fake driver talks to: one committed state, a log of statements, failure switches."""

    def __init__(self) -> None:
        self.state = State()
        self.calls: list[Call] = []
        self.drivers: list[FakeDriver] = []
        self.commits = 0
        self.rollbacks = 0
        self.unavailable = False
        self.fail_on: str | None = None  # a statement that raises a server error
        self.canned: dict[str, list[dict[str, Any]]] = {}  # rows for other (user) queries

    def driver(self, uri: str, *, auth: Any = None, **config: Any) -> FakeDriver:
        driver = FakeDriver(self, uri, auth)
        self.drivers.append(driver)
        return driver

    def statements(self, kind: str | None = None) -> list[str]:
        return [c.query for c in self.calls if kind is None or c.kind == kind]


class FakeTransaction:
    def __init__(self, server: FakeServer, kind: str, mode: str):
        self.server, self.kind, self.mode = server, kind, mode
        self.work = copy.deepcopy(server.state)
        self.closed = False

    def run(self, query: str, parameters: dict[str, Any] | None = None, **kw: Any) -> Result:
        assert not self.closed, "statement on a closed transaction"
        params = {**(parameters or {}), **kw}
        self.server.calls.append(Call(self.kind, self.mode, query, copy.deepcopy(params)))
        if query == self.server.fail_on:
            raise Neo4jError._hydrate_neo4j(code="Neo.DatabaseError.General.UnknownError", message="boom")
        if self.mode == neo4j.READ_ACCESS and (query in WRITES or query.startswith("CALL db.create")):
            raise Neo4jError._hydrate_neo4j(
                code="Neo.ClientError.Statement.AccessMode", message="Writing in read access mode not allowed"
            )
        if query in HANDLERS:
            return Result(HANDLERS[query](self.work, params))
        if query in self.server.canned:
            return Result(self.server.canned[query])
        raise Neo4jError._hydrate_neo4j(code="Neo.ClientError.Statement.SyntaxError", message=f"fake: {query}")

    def commit(self) -> None:
        assert not self.closed
        self.server.state = self.work
        self.server.commits += 1
        self.closed = True

    def rollback(self) -> None:
        assert not self.closed
        self.server.rollbacks += 1
        self.closed = True


class FakeSession:
    def __init__(self, server: FakeServer, database: str, mode: str):
        self.server, self.database, self.mode = server, database, mode

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run(self, query: str, parameters: dict[str, Any] | None = None) -> Result:
        tx = FakeTransaction(self.server, "auto", self.mode)
        result = tx.run(query, parameters)
        tx.commit()
        return result

    def begin_transaction(self) -> FakeTransaction:
        return FakeTransaction(self.server, "explicit", self.mode)

    def _managed(self, kind: str, mode: str, work: Callable[..., Any]) -> Any:
        tx = FakeTransaction(self.server, kind, mode)
        try:
            out = work(tx)
        except BaseException:
            tx.rollback()
            raise
        tx.commit()
        return out

    def execute_read(self, work: Callable[..., Any]) -> Any:
        return self._managed("read", neo4j.READ_ACCESS, work)

    def execute_write(self, work: Callable[..., Any]) -> Any:
        return self._managed("write", neo4j.WRITE_ACCESS, work)


class FakeDriver:
    def __init__(self, server: FakeServer, uri: str, auth: Any):
        self.server, self.uri, self.auth = server, uri, auth
        self.sessions: list[FakeSession] = []
        self.closed = False

    def verify_connectivity(self) -> None:
        if self.server.unavailable:
            raise ServiceUnavailable(f"Couldn't connect to {self.uri}")

    def session(self, database: str | None = None, default_access_mode: str = neo4j.WRITE_ACCESS) -> FakeSession:
        s = FakeSession(self.server, database, default_access_mode)
        self.sessions.append(s)
        return s

    def close(self) -> None:
        self.closed = True


# -- tests ----------------------------------------------------------------------------------


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()
    monkeypatch.setattr(neo4j.GraphDatabase, "driver", fake.driver)
    for var in ("KELM_NEO4J_URI", "KELM_NEO4J_USER", "KELM_NEO4J_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    return fake


def small_graph() -> KnowledgeGraph:
    kg = KnowledgeGraph()
    kg.entities["a"] = Entity("a", "Alpha", None, ("letter",))
    kg.relations["next"] = Relation("next", "is followed by")
    kg.add_triples("train", [Triple("a", "next", "b", Provenance("wiki", 0.9, "2020")), Triple("b", "next", "c")])
    kg.add_triples("test", [Triple("c", "back", "a")])
    return kg


def test_open_connects_and_creates_constraints(server: FakeServer) -> None:
    with Neo4jStore("kgdb", uri="bolt://db:7687", user="u", password="p") as store:
        assert store.backend == "neo4j" and store.database == "kgdb"
        driver = server.drivers[0]
        assert (driver.uri, driver.auth) == ("bolt://db:7687", ("u", "p"))
        assert server.statements() == list(CONSTRAINTS)
        assert all("IF NOT EXISTS" in c and "IS UNIQUE" in c for c in CONSTRAINTS)
        assert {s.database for s in driver.sessions} == {"kgdb"}
    assert driver.closed


def test_defaults_from_environment(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KELM_NEO4J_URI", "neo4j://env:7687")
    monkeypatch.setenv("KELM_NEO4J_USER", "envuser")
    monkeypatch.setenv("KELM_NEO4J_PASSWORD", "secret")
    with open_store("", "neo4j") as store:
        assert isinstance(store, Neo4jStore) and store.database == "neo4j"
    assert (server.drivers[0].uri, server.drivers[0].auth) == ("neo4j://env:7687", ("envuser", "secret"))
    monkeypatch.delenv("KELM_NEO4J_URI")
    monkeypatch.delenv("KELM_NEO4J_USER")
    monkeypatch.delenv("KELM_NEO4J_PASSWORD")
    with Neo4jStore(""):
        pass
    assert (server.drivers[1].uri, server.drivers[1].auth) == ("bolt://localhost:7687", None)


def test_connection_failure_is_a_store_error(server: FakeServer) -> None:
    server.unavailable = True
    with pytest.raises(StoreError, match="cannot open Neo4j database 'neo4j' at bolt://nowhere:7687"):
        Neo4jStore("", uri="bolt://nowhere:7687")
    assert server.drivers[0].closed


def test_import_is_one_transaction_with_the_shared_cypher(server: FakeServer) -> None:
    kg = small_graph()
    with Neo4jStore("", batch_size=2) as store:
        server.calls.clear()
        report = store.import_graph(kg)
        assert (report.entities, report.relations, report.triples) == (3, 2, 3)
        assert {c.kind for c in server.calls} == {"explicit"} and server.commits == 3  # 2 constraints + import
        assert server.rollbacks == 0
        assert server.statements() == [
            cypher.ENTITY_IDS,
            cypher.RELATION_IDS,
            cypher.CREATE_ENTITIES,  # a, b: the first chunk holds every entity, two per batch
            cypher.CREATE_ENTITIES,  # c
            cypher.CREATE_RELATIONS,  # next, back
            cypher.CREATE_FACTS,  # train
            cypher.CREATE_FACTS,  # test
        ]
        creates = [c.params["rows"] for c in server.calls if c.query == cypher.CREATE_ENTITIES]
        assert creates[0][0] == {"id": "a", "label": "Alpha", "description": None, "types": ["letter"]}
        assert [[r["id"] for r in rows] for rows in creates] == [["a", "b"], ["c"]]
        facts = [c.params for c in server.calls if c.query == cypher.CREATE_FACTS]
        assert facts == [
            {"rows": triple_rows(kg.splits["train"], "train")},
            {"rows": triple_rows(kg.splits["test"], "test")},
        ]
        assert store.stats().to_dict() == {
            "entities": 3,
            "relations": 2,
            "triples": 3,
            "splits": {"test": 1, "train": 2},
        }
        out = store.export()
        assert sorted(out.splits["train"], key=repr) == sorted(kg.splits["train"], key=repr)
        assert out.entities["a"] == kg.entities["a"]
        assert [(f.head, f.tail) for f in store.neighbors("a")] == [("a", "b"), ("c", "a")]


def test_batches_respect_batch_size(server: FakeServer) -> None:
    kg = KnowledgeGraph()
    kg.add_triples("train", [Triple(f"e{i}", "r", f"e{i + 1}") for i in range(5)])
    with Neo4jStore("", batch_size=2) as store:
        store.import_graph(kg)
        sizes = [len(c.params["rows"]) for c in server.calls if c.query == cypher.CREATE_FACTS]
        assert sizes == [2, 2, 1]


def test_import_into_existing_merges_known_ids(server: FakeServer) -> None:
    with Neo4jStore("") as store:
        store.import_graph(small_graph())
        server.calls.clear()
        store.import_chunks([GraphChunk(entities=[Entity("a", None, "first")], triples=[Triple("a", "next", "z")])])
        assert server.statements() == [
            cypher.ENTITY_IDS,
            cypher.RELATION_IDS,
            cypher.CREATE_ENTITIES,
            cypher.MERGE_ENTITIES,
            cypher.CREATE_FACTS,
        ]
        assert store.get_entities(["a"])["a"] == Entity("a", "Alpha", "first", ("letter",))


@pytest.mark.parametrize("replace", [False, True])
def test_failed_import_rolls_back(server: FakeServer, replace: bool) -> None:
    with Neo4jStore("") as store:
        store.import_graph(small_graph())
        before = copy.deepcopy(server.state)
        commits = server.commits

        def chunks() -> Iterator[GraphChunk]:
            yield GraphChunk(triples=[Triple("x", "r", "y")], split="train")
            raise RuntimeError("source broke")

        with pytest.raises(RuntimeError, match="source broke"):
            store.import_chunks(chunks(), replace=replace)
        assert server.rollbacks == 1 and server.commits == commits
        assert server.state == before
        assert (cypher.DELETE_ALL in server.statements()) == replace

        server.fail_on = cypher.CREATE_FACTS
        with pytest.raises(StoreError, match="rolled back"):
            store.import_graph(small_graph(), replace=replace)
        assert server.rollbacks == 2 and server.commits == commits
        assert server.state == before


def test_upsert_facts_is_one_write_transaction(server: FakeServer) -> None:
    with Neo4jStore("") as store:
        store.import_graph(small_graph())
        server.calls.clear()
        given = [Triple("a", "next", "b", Provenance("new", None, "2024")), Triple("q", "fresh", "a")]
        assert store.upsert_facts(given, split="train") == 2
        assert {c.kind for c in server.calls} == {"write"}
        assert [(c.query, c.params) for c in server.calls] == [
            (cypher.MERGE_ENDPOINTS, {"ids": ["a", "b", "q"]}),
            (cypher.MERGE_RELATION_IDS, {"ids": ["fresh", "next"]}),
            (cypher.MERGE_FACTS, {"rows": triple_rows(given, "train")}),
        ]
        (fact,) = [f for f in store.neighbors("a", "out") if f.tail == "b"]
        assert (fact.source, fact.confidence, fact.time) == ("new", 0.9, "2024")
        assert store.stats().triples == 4
        assert store.upsert_entities([Entity("a", None, "desc")]) == 1
        assert server.calls[-1].query == cypher.MERGE_ENTITIES


def test_query_runs_in_a_read_transaction(server: FakeServer) -> None:
    text = "MATCH (e:Entity) WHERE e.id = $x RETURN e.id AS id"
    server.canned[text] = [{"id": "a"}]
    with Neo4jStore("") as store:
        server.calls.clear()
        assert store.query(text, {"x": "a"}) == [{"id": "a"}]
        assert [(c.kind, c.mode, c.params) for c in server.calls] == [("read", neo4j.READ_ACCESS, {"x": "a"})]
        server.calls.clear()
        with pytest.raises(ReadOnlyQueryError):
            store.query("MATCH (n) DETACH DELETE n")
        assert server.calls == []  # rejected before anything is sent
        # A write that slips past the client-side check is refused by the read transaction.
        with pytest.raises(ReadOnlyQueryError, match="read access mode"):
            store.query("CALL db.createLabel('Z')")
        assert server.calls[-1].mode == neo4j.READ_ACCESS


def test_query_returns_plain_values_like_the_other_backends(server: FakeServer) -> None:
    graph = Graph()
    c = Node(graph, "4:g:0", 0, ["Entity"], {"id": "c", "types": []})
    d = Node(graph, "4:g:1", 1, ["Entity"], {"id": "d", "types": []})
    fact = graph.relationship_type("FACT")(graph, "5:g:0", 0, {"rel": "next", "split": "train", "source": "book"})
    fact._start_node, fact._end_node = c, d
    text = "MATCH p = (c:Entity {id: 'c'})-[f:FACT]->(d:Entity) RETURN p, c, f, [d] AS ds, {node: d, n: 1} AS m"
    server.canned[text] = [{"p": Path(c, fact), "c": c, "f": fact, "ds": [d], "m": {"node": d, "n": 1}}]
    with Neo4jStore("") as store:
        assert store.query(text) == [
            {
                "p": {
                    "nodes": [{"id": "c", "types": []}, {"id": "d", "types": []}],
                    "edges": [{"rel": "next", "split": "train", "source": "book"}],
                },
                "c": {"id": "c", "types": []},
                "f": {"rel": "next", "split": "train", "source": "book"},
                "ds": [{"id": "d", "types": []}],
                "m": {"node": {"id": "d", "types": []}, "n": 1},
            }
        ]


def test_stats_and_incident_facts_read_in_one_transaction(server: FakeServer) -> None:
    with Neo4jStore("") as store:
        store.import_graph(small_graph())
        store.upsert_facts([Triple("a", "r", "b")])
        store.import_chunks([GraphChunk(triples=[Triple("b", "r", "c")], split="unsplit")])
        server.calls.clear()
        commits = server.commits
        assert store.stats().splits == {"test": 1, "train": 2, "unsplit": 2}
        assert len(store.incident_facts(["b"])) == 4
        assert server.commits == commits + 2
        assert server.statements() == [
            cypher.COUNT_ENTITIES,
            cypher.COUNT_RELATIONS,
            cypher.COUNT_SPLITS,
            cypher.OUT_FACTS,
            cypher.IN_FACTS,
        ]
        assert {c.kind for c in server.calls} == {"read"}


def test_read_only_store(server: FakeServer) -> None:
    with Neo4jStore("") as store:
        store.import_graph(small_graph())
    server.calls.clear()
    with Neo4jStore("", read_only=True) as reader:
        assert server.statements() == []  # no constraints created
        assert reader.stats().triples == 3
        for write in (
            lambda: reader.import_graph(small_graph()),
            lambda: reader.upsert_facts([Triple("a", "r", "b")]),
            lambda: reader.upsert_entities([Entity("a")]),
            reader.clear,
        ):
            with pytest.raises(StoreError, match="read-only"):
                write()
        assert {c.mode for c in server.calls} == {neo4j.READ_ACCESS}
        assert {s.mode for s in server.drivers[-1].sessions} == {neo4j.READ_ACCESS}


def test_clear(server: FakeServer) -> None:
    with Neo4jStore("") as store:
        store.import_graph(small_graph())
        store.clear()
        assert server.calls[-1].query == cypher.DELETE_ALL and server.calls[-1].kind == "write"
        assert store.stats().to_dict() == {"entities": 0, "relations": 0, "triples": 0, "splits": {}}
