"""FalkorDB (a Redis module): a store is one named graph on a server.

FalkorDB has no multi-statement transactions, so a bulk import is copy-on-write: the graph
is copied (``GRAPH.COPY``) to a staging key, every chunk is written there, and the staging
key is renamed over the graph at the end (``RENAME`` is atomic). On failure the staging key
is deleted. A staging key is named after the graph and the server-side id of the importing
connection; when a process is killed its connection closes, and the next open deletes the
keys whose connection is gone. Writes made by others to the same graph during an import are
overwritten by the rename.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import redis
from falkordb import Edge, FalkorDB, Graph, Node, Path
from redis.exceptions import RedisError, ResponseError

from kelm.errors import ReadOnlyQueryError, StoreError
from kelm.kg.model import Entity, GraphChunk, Triple
from kelm.kg.store import cypher
from kelm.kg.store.base import GraphStore, ImportReport, ProgressFn, entity_rows, triple_rows
from kelm.kg.store.documents import ChangeReport, CypherTx, DocumentTx
from kelm.kg.store.planning import batches, collapse_entities, collapse_triples, write_chunks

DEFAULT_URI = "redis://127.0.0.1:6379"
BATCH_SIZE = 10_000
STAGING = ".__import__."
INDEXES = (
    "CREATE INDEX FOR (e:Entity) ON (e.id)",
    "CREATE INDEX FOR (r:Relation) ON (r.id)",
    "CREATE INDEX FOR (d:Document) ON (d.id)",
    "CREATE INDEX FOR (v:Evidence) ON (v.fact)",
    "CREATE INDEX FOR (v:Evidence) ON (v.document)",
    "CREATE INDEX FOR (x:ExtractedEntity) ON (x.id)",
)
_SCHEMES = {"falkor://": "redis://", "falkors://": "rediss://"}


def redis_url(uri: str) -> str:
    """``falkor://`` and ``falkors://`` as the ``redis://`` and ``rediss://`` URLs they stand for."""
    for scheme, target in _SCHEMES.items():
        if uri.startswith(scheme):
            return target + uri[len(scheme) :]
    if uri.startswith(("redis://", "rediss://", "unix://")):
        return uri
    raise StoreError(f"FalkorDB uri must start with falkor://, redis://, rediss:// or unix://, not '{uri}'")


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def cypher_literal(value: Any) -> str:
    """A parameter value as a Cypher literal for the ``CYPHER name=value ...`` query header."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StoreError(f"FalkorDB cannot store the number {value}")
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(map(cypher_literal, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_key(k)}:{cypher_literal(v)}" for k, v in value.items()) + "}"
    raise StoreError(f"cannot pass a {type(value).__name__} to FalkorDB")


def _key(name: object) -> str:
    name = str(name)
    if not name or "`" in name:
        raise StoreError(f"invalid Cypher parameter or map key {name!r}")
    return f"`{name}`"


def with_params(text: str, params: dict[str, Any] | None) -> str:
    """``text`` prefixed with its parameters (FalkorDB takes parameters inline)."""
    if not params:
        return text
    return "CYPHER " + " ".join(f"{_key(k)}={cypher_literal(v)}" for k, v in params.items()) + " " + text


class FalkorDBStore(GraphStore):
    """A graph store in one named graph on a FalkorDB server."""

    backend = "falkordb"
    in_facts_cypher = cypher.IN_FACTS_UNLABELLED_HEAD
    in_neighbors_cypher = cypher.IN_NEIGHBORS_UNLABELLED_HEAD

    def __init__(
        self,
        name: str,
        uri: str | None = None,
        read_only: bool = False,
        *,
        batch_size: int = BATCH_SIZE,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float | None = None,
    ):
        if not name:
            raise StoreError("a FalkorDB store needs a graph name")
        if STAGING in name:
            raise StoreError(f"graph name '{name}' must not contain '{STAGING}'")
        self.name = name
        self.uri = uri or os.environ.get("KELM_FALKORDB_URI") or DEFAULT_URI
        self.read_only = read_only
        self.batch_size = batch_size
        self._db: FalkorDB | None = None
        try:
            pool = redis.ConnectionPool.from_url(
                redis_url(self.uri),
                decode_responses=True,
                username=username,
                password=password,
                socket_connect_timeout=connect_timeout,
                # redis-py gives up on a reply after 5 s by default; a large export or
                # neighbourhood query can take longer, so reads wait unless told otherwise.
                socket_timeout=read_timeout,
            )
            # One connection for the store's lifetime: its server-side id marks our staging keys.
            self._db = FalkorDB(connection_pool=pool, single_connection_client=True)
            self._graph = self._db.select_graph(name)
            self.remove_stale_staging()
            if read_only:
                if not self._exists(name):
                    raise StoreError(f"no graph '{name}' on FalkorDB at {self.uri} (import one first)")
            else:
                self._ensure_indexes(self._graph)
        except RedisError as err:
            self.close()
            raise StoreError(f"cannot open FalkorDB graph '{name}' at {self.uri}: {err}") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        db, self._db = getattr(self, "_db", None), None
        if db is not None:
            db.close()
            db.connection.connection_pool.disconnect()

    # -- helpers --------------------------------------------------------------------------
    @property
    def _redis(self) -> redis.Redis:
        if self._db is None:
            raise StoreError(f"FalkorDB store '{self.name}' is closed")
        return self._db.connection

    def _command(self, *args: Any) -> Any:
        try:
            return self._redis.execute_command(*args)
        except RedisError as err:
            raise StoreError(f"FalkorDB at {self.uri}: {err}") from None

    def _exists(self, key: str) -> bool:
        return self._command("TYPE", key) == "graphdata"

    def _client_id(self) -> int:
        return int(self._command("CLIENT", "ID"))

    def _rows(self, text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a read-only statement through ``GRAPH.RO_QUERY``."""
        if self._db is None:
            raise StoreError(f"FalkorDB store '{self.name}' is closed")
        try:
            result = self._graph.ro_query(with_params(text, params))
        except RedisError as err:
            if "empty key" in str(err):
                raise StoreError(f"no graph '{self.name}' on FalkorDB at {self.uri}") from None
            if "only on read-only queries" in str(err):
                raise ReadOnlyQueryError(f"query is read-only: {err}") from None
            raise StoreError(f"FalkorDB: {err}") from None
        names = [col[1] for col in result.header]
        return [dict(zip(names, row, strict=True)) for row in result.result_set]

    def _properties(self, value: Any) -> dict[str, Any] | None:
        return value.properties if isinstance(value, Node | Edge) else None

    def _path(self, value: Any) -> tuple[list[Any], list[Any]] | None:
        return (value.nodes(), value.edges()) if isinstance(value, Path) else None

    def _write(self, graph: Graph, text: str, params: dict[str, Any]) -> None:
        self._require_writable()
        try:
            graph.query(with_params(text, params))
        except RedisError as err:
            raise StoreError(f"FalkorDB: {err}") from None

    def _write_batches(self, graph: Graph, text: str, rows: list[Any], key: str = "rows") -> None:
        for batch in batches(rows, self.batch_size):
            self._write(graph, text, {key: batch})

    def _ensure_indexes(self, graph: Graph) -> None:
        for stmt in INDEXES:
            try:
                graph.query(stmt)
            except ResponseError as err:
                if "already indexed" not in str(err):
                    raise

    def _ids(self, graph: Graph, text: str) -> set[str]:
        try:
            return {row[0] for row in graph.ro_query(text).result_set}
        except RedisError as err:
            raise StoreError(f"FalkorDB: {err}") from None

    def _require_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"FalkorDB graph '{self.name}' is open read-only")

    def remove_stale_staging(self) -> list[str]:
        """Staging keys of this graph whose importing connection is gone: deleted unless read-only."""
        prefix = self.name + STAGING
        keys = list(self._redis.scan_iter(match=_glob_escape(prefix) + "*", count=1000))
        if not keys:
            return []
        live = {int(c["id"]) for c in self._redis.client_list()}
        stale = []
        for key in keys:
            owner = key[len(prefix) :].split(".", 1)[0]
            if owner.isdigit() and int(owner) not in live:
                stale.append(key)
        if stale and not self.read_only:
            self._redis.delete(*stale)
        return stale

    # -- writing --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _staged(self, replace: bool) -> Iterator[tuple[Graph, bool]]:
        """Copy-on-write: a staging copy of the graph (empty with ``replace``) to write into, renamed
        over the graph when the block ends without an error and deleted when it raises. Yields
        the staging graph and whether it holds a copy."""
        owner = self._client_id()
        staging_name = f"{self.name}{STAGING}{owner}.{uuid.uuid4().hex[:12]}"
        staging = self._db.select_graph(staging_name)
        try:
            copied = not replace and self._exists(self.name)
            if copied:
                self._command("GRAPH.COPY", self.name, staging_name)
            try:
                self._ensure_indexes(staging)
            except RedisError as err:
                raise StoreError(f"FalkorDB: {err}") from None
            yield staging, copied
            # A reconnect would give a new id: then a concurrent open may have dropped the staging key.
            if self._client_id() != owner:
                raise StoreError(f"connection to FalkorDB at {self.uri} was lost during the write")
            self._command("RENAME", staging_name, self.name)
        except BaseException:
            self._drop(staging_name)
            raise
        self._graph.schema.clear()

    def _import(
        self, chunks: Iterable[GraphChunk], replace: bool, report: ImportReport, progress: ProgressFn | None
    ) -> None:
        """Write every chunk into a staging copy of the graph (`_staged`)."""
        with self._staged(replace) as (staging, copied):
            known_e = self._ids(staging, cypher.ENTITY_IDS) if copied else set()
            known_r = self._ids(staging, cypher.RELATION_IDS) if copied else set()
            write_chunks(chunks, known_e, known_r, partial(self._write_batches, staging), report, progress)

    def _in_transaction(self, work: Callable[[DocumentTx], ChangeReport]) -> ChangeReport:
        """FalkorDB has no multi-statement transactions: the work runs on a staging copy (`_staged`)."""
        with self._staged(replace=False) as (staging, _):
            return work(_StagedTx(self, staging))

    def _drop(self, key: str) -> None:
        """Best-effort delete; a key left behind is removed by the next open."""
        with contextlib.suppress(RedisError, StoreError):
            self._redis.delete(key)

    def upsert_entities(self, entities: Iterable[Entity]) -> int:
        self._require_writable()
        entities = list(entities)
        self._write_batches(self._graph, cypher.MERGE_ENTITIES, entity_rows(collapse_entities(entities)))
        return len(entities)

    def upsert_facts(self, triples: Iterable[Triple], split: str | None = None) -> int:
        """Each batch is one atomic statement: endpoints, relation ids and facts together."""
        self._require_writable()
        triples = list(triples)
        for batch in batches(collapse_triples(triples), self.batch_size):
            params = {
                "ids": sorted({t.head for t in batch} | {t.tail for t in batch}),
                "rel_ids": sorted({t.relation for t in batch}),
                "rows": triple_rows(batch, split),
            }
            self._write(self._graph, cypher.UPSERT_FACTS, params)
        return len(triples)

    def clear(self) -> None:
        self._require_writable()
        self._write(self._graph, cypher.DELETE_ALL, {})

    # -- reading --------------------------------------------------------------------------
    def query(self, cypher_text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        # Another client may have rebuilt the graph: re-read label and property names.
        self._graph.schema.clear()
        return super().query(cypher_text, params)


class _StagedTx(CypherTx):
    """Reads and writes on a staging graph."""

    def __init__(self, store: FalkorDBStore, graph: Graph):
        self.store, self.graph = store, graph

    def rows(self, text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            result = self.graph.query(with_params(text, params))
        except RedisError as err:
            raise StoreError(f"FalkorDB: {err}") from None
        names = [col[1] for col in result.header]
        return [dict(zip(names, row, strict=True)) for row in result.result_set]

    def write(self, text: str, params: dict[str, Any] | None = None) -> None:
        self.store._write(self.graph, text, params or {})
