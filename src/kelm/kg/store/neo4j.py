"""Neo4j through the official driver: a store is one database on a server.

A bulk import runs in one explicit transaction, so it commits entirely or not at all; reads
run in read transactions. Uniqueness constraints on ``Entity.id`` and ``Relation.id`` are
created on open.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, TypeVar

import neo4j
from neo4j.exceptions import DriverError, Neo4jError
from neo4j.graph import Node, Path, Relationship

from kelm.errors import ReadOnlyQueryError, StoreError
from kelm.kg.model import Entity, GraphChunk, Triple
from kelm.kg.store import cypher
from kelm.kg.store.base import GraphStore, ImportReport, ProgressFn, entity_rows, triple_rows
from kelm.kg.store.documents import ChangeReport, CypherTx, DocumentTx
from kelm.kg.store.planning import batches, collapse_entities, collapse_triples, write_chunks

DEFAULT_URI = "bolt://localhost:7687"
DEFAULT_DATABASE = "neo4j"
BATCH_SIZE = 10_000
CONSTRAINTS = (
    "CREATE CONSTRAINT kelm_entity_id IF NOT EXISTS FOR (e:Entity) REQUIRE e.id IS UNIQUE",
    "CREATE CONSTRAINT kelm_relation_id IF NOT EXISTS FOR (r:Relation) REQUIRE r.id IS UNIQUE",
)

T = TypeVar("T")
Tx = Any  # a neo4j Transaction or ManagedTransaction: both have run()


def _run(tx: Tx, text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows keyed by the RETURN names, with the driver's node, relationship and path objects."""
    return [dict(record.items()) for record in tx.run(text, params or {})]


def _run_batches(tx: Tx, text: str, rows: list[dict[str, Any]], size: int) -> None:
    for batch in batches(rows, size):
        tx.run(text, {"rows": batch}).consume()


class Neo4jStore(GraphStore):
    """A graph store in one database of a Neo4j server."""

    backend = "neo4j"

    def __init__(
        self,
        name: str = "",
        uri: str | None = None,
        read_only: bool = False,
        *,
        user: str | None = None,
        password: str | None = None,
        batch_size: int = BATCH_SIZE,
    ):
        self.database = name or DEFAULT_DATABASE
        self.uri = uri or os.environ.get("KELM_NEO4J_URI") or DEFAULT_URI
        self.read_only = read_only
        self.batch_size = batch_size
        user = user if user is not None else os.environ.get("KELM_NEO4J_USER")
        password = password if password is not None else os.environ.get("KELM_NEO4J_PASSWORD")
        auth = None if user is None and password is None else (user or "neo4j", password or "")
        self._driver = None
        try:
            self._driver = neo4j.GraphDatabase.driver(self.uri, auth=auth)
            self._driver.verify_connectivity()
            if not read_only:
                with self._session() as session:
                    for stmt in CONSTRAINTS:
                        session.run(stmt).consume()
        except (Neo4jError, DriverError, OSError, ValueError) as err:
            self.close()
            raise StoreError(f"cannot open Neo4j database '{self.database}' at {self.uri}: {err}") from None

    def close(self) -> None:
        driver, self._driver = getattr(self, "_driver", None), None
        if driver is not None:
            driver.close()

    # -- helpers --------------------------------------------------------------------------
    def _session(self, read: bool = False) -> neo4j.Session:
        if self._driver is None:
            raise StoreError(f"Neo4j store '{self.database}' is closed")
        mode = neo4j.READ_ACCESS if read or self.read_only else neo4j.WRITE_ACCESS
        return self._driver.session(database=self.database, default_access_mode=mode)

    def _read(self, work: Callable[[Tx], T]) -> T:
        try:
            with self._session(read=True) as session:
                return session.execute_read(work)
        except Neo4jError as err:
            # The server refuses writes in a read transaction (Neo.ClientError.Statement.AccessMode).
            if "AccessMode" in (err.code or ""):
                raise ReadOnlyQueryError(f"query is read-only: {err.message or err}") from None
            raise StoreError(f"Neo4j: {err}") from None
        except DriverError as err:
            raise StoreError(f"Neo4j: {err}") from None

    def _rows(self, text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self._read(lambda tx: _run(tx, text, params))

    def _read_all(self, statements: Sequence[tuple[str, dict[str, Any] | None]]) -> list[list[dict[str, Any]]]:
        """One read transaction for all the statements: their results are consistent."""
        return self._read(lambda tx: [_run(tx, text, params) for text, params in statements])

    def _properties(self, value: Any) -> dict[str, Any] | None:
        return dict(value.items()) if isinstance(value, Node | Relationship) else None

    def _path(self, value: Any) -> tuple[list[Any], list[Any]] | None:
        return (list(value.nodes), list(value.relationships)) if isinstance(value, Path) else None

    def _write(self, work: Callable[[Tx], T]) -> T:
        self._require_writable()
        try:
            with self._session() as session:
                return session.execute_write(work)
        except (Neo4jError, DriverError) as err:
            raise StoreError(f"Neo4j: {err}") from None

    def _require_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"Neo4j database '{self.database}' is open read-only")

    # -- writing --------------------------------------------------------------------------
    def _import(
        self, chunks: Iterable[GraphChunk], replace: bool, report: ImportReport, progress: ProgressFn | None
    ) -> None:
        """One explicit transaction, committed at the end or rolled back."""
        try:
            with self._session() as session:
                tx = session.begin_transaction()
                try:
                    self._import_in(tx, chunks, replace, progress, report)
                    tx.commit()
                except BaseException:
                    with contextlib.suppress(Exception):
                        tx.rollback()
                    raise
        except (Neo4jError, DriverError) as err:
            raise StoreError(f"Neo4j import into '{self.database}' was rolled back: {err}") from None

    def _import_in(
        self,
        tx: Tx,
        chunks: Iterable[GraphChunk],
        replace: bool,
        progress: ProgressFn | None,
        report: ImportReport,
    ) -> None:
        if replace:
            tx.run(cypher.DELETE_ALL).consume()
            known_e: set[str] = set()
            known_r: set[str] = set()
        else:
            known_e = {row["id"] for row in _run(tx, cypher.ENTITY_IDS)}
            known_r = {row["id"] for row in _run(tx, cypher.RELATION_IDS)}
        write = partial(_run_batches, tx, size=self.batch_size)
        write_chunks(chunks, known_e, known_r, write, report, progress)

    def upsert_entities(self, entities: Iterable[Entity]) -> int:
        entities = list(entities)
        rows = entity_rows(collapse_entities(entities))
        if rows:
            self._write(lambda tx: _run_batches(tx, cypher.MERGE_ENTITIES, rows, self.batch_size))
        return len(entities)

    def upsert_facts(self, triples: Iterable[Triple], split: str | None = None) -> int:
        """Endpoints, relation ids and facts in one write transaction."""
        given = list(triples)
        if not given:
            return 0
        triples = collapse_triples(given)
        ids = sorted({t.head for t in triples} | {t.tail for t in triples})
        rels = sorted({t.relation for t in triples})
        rows = triple_rows(triples, split)

        def work(tx: Tx) -> None:
            tx.run(cypher.MERGE_ENDPOINTS, {"ids": ids}).consume()
            tx.run(cypher.MERGE_RELATION_IDS, {"ids": rels}).consume()
            _run_batches(tx, cypher.MERGE_FACTS, rows, self.batch_size)

        self._write(work)
        return len(given)

    def clear(self) -> None:
        self._write(lambda tx: tx.run(cypher.DELETE_ALL).consume())

    def _in_transaction(self, work: Callable[[DocumentTx], ChangeReport]) -> ChangeReport:
        """One write transaction (retried by the driver on transient errors)."""
        return self._write(lambda tx: work(_Tx(tx)))


class _Tx(CypherTx):
    """Reads and writes inside a Neo4j transaction."""

    def __init__(self, tx: Tx):
        self.tx = tx

    def rows(self, text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return _run(self.tx, text, params)

    def write(self, text: str, params: dict[str, Any] | None = None) -> None:
        self.tx.run(text, params or {}).consume()
