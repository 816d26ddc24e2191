"""LadybugDB (embedded Cypher, the continuation of Kùzu): kelm's default store.

A store is a folder holding the database file ``graph.lbug``. Bulk import streams each
chunk as an Arrow table through ``COPY``, all inside one transaction: an exception rolls it
back, and a killed process leaves only an uncommitted WAL that the next open discards.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import ladybug
import pyarrow as pa

from kelm.errors import StoreError
from kelm.kg.model import Entity, GraphChunk, Relation, Triple
from kelm.kg.store import cypher
from kelm.kg.store.base import (
    UNSPLIT,
    Fact,
    GraphStore,
    ImportReport,
    ProgressFn,
    StoreStats,
    ensure_read_only,
    entity_rows,
    relation_rows,
    triple_rows,
)

DB_FILE = "graph.lbug"

SCHEMA = (
    "CREATE NODE TABLE IF NOT EXISTS Entity("
    "id STRING PRIMARY KEY, label STRING, description STRING, types STRING[])",
    "CREATE NODE TABLE IF NOT EXISTS Relation(id STRING PRIMARY KEY, label STRING, description STRING)",
    "CREATE REL TABLE IF NOT EXISTS FACT("
    "FROM Entity TO Entity, rel STRING, split STRING, source STRING, confidence DOUBLE, time STRING)",
)

# A parameter field that is null in every row is typed STRING; cast it for the DOUBLE property.
_MERGE_FACTS = cypher.MERGE_FACTS.replace(
    "coalesce(row.confidence,", "coalesce(CAST(row.confidence AS DOUBLE),"
)

_ENTITY_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("label", pa.string()),
        ("description", pa.string()),
        ("types", pa.list_(pa.string())),
    ]
)
_RELATION_SCHEMA = pa.schema([("id", pa.string()), ("label", pa.string()), ("description", pa.string())])
_FACT_SCHEMA = pa.schema(
    [
        ("from", pa.string()),
        ("to", pa.string()),
        ("rel", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
        ("confidence", pa.float64()),
        ("time", pa.string()),
    ]
)


class LadybugStore(GraphStore):
    """A graph store in an embedded LadybugDB database folder."""

    backend = "ladybug"

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        db_file = self.path / DB_FILE
        if read_only and not db_file.exists():
            raise StoreError(f"no store at {self.path} (import one with 'kelm kg import')")
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{self.path} is a file; a LadybugDB store is a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._db = ladybug.Database(str(db_file), read_only=read_only)
            self._conn = ladybug.Connection(self._db)
        except RuntimeError as err:
            raise StoreError(f"cannot open LadybugDB store {self.path}: {err}") from None
        if not read_only:
            for stmt in SCHEMA:
                self._conn.execute(stmt)

    def close(self) -> None:
        if getattr(self, "_conn", None) is not None:
            self._conn.close()
            self._db.close()
            self._conn = None

    # -- helpers --------------------------------------------------------------------------
    def _rows(self, cypher_text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            result = self._conn.execute(cypher_text, params or {})
        except RuntimeError as err:
            raise StoreError(f"LadybugDB: {err}") from None
        names = result.get_column_names()
        return [dict(zip(names, row, strict=True)) for row in result.get_all()]

    def _copy(self, table: str, data: pa.Table) -> None:
        if data.num_rows:
            # Ladybug resolves the Arrow table by its Python variable name.
            try:
                self._conn.execute(f"COPY {table} FROM data")
            except RuntimeError as err:
                raise StoreError(f"LadybugDB: COPY {table}: {err}") from None

    def _write(self, cypher_text: str, params: dict[str, Any] | None = None) -> None:
        try:
            self._conn.execute(cypher_text, params or {})
        except RuntimeError as err:
            raise StoreError(f"LadybugDB: {err}") from None

    def _existing_ids(self, label: str) -> set[str]:
        return {row["id"] for row in self._rows(f"MATCH (n:{label}) RETURN n.id AS id")}

    # -- writing --------------------------------------------------------------------------
    def import_chunks(
        self, chunks: Iterable[GraphChunk], *, replace: bool = False, progress: ProgressFn | None = None
    ) -> ImportReport:
        self._require_writable()
        report = ImportReport()
        start = time.perf_counter()
        self._write("BEGIN TRANSACTION")
        try:
            if replace:
                self._write(cypher.DELETE_ALL)
            known_e = self._existing_ids("Entity")
            known_r = self._existing_ids("Relation")
            for chunk in chunks:
                report.entities += self._add_entities(chunk.entities, chunk.triples, known_e)
                report.relations += self._add_relations(chunk.relations, chunk.triples, known_r)
                if chunk.triples:
                    rows = triple_rows(chunk.triples, chunk.split)
                    data = pa.Table.from_pylist(
                        [{"from": r["h"], "to": r["t"], "rel": r["r"], **_fact_props(r)} for r in rows],
                        schema=_FACT_SCHEMA,
                    )
                    self._copy("FACT", data)
                    report.triples += len(rows)
                    if progress is not None:
                        progress(len(rows))
            self._write("COMMIT")
        except BaseException:
            self._rollback()
            raise
        report.seconds = time.perf_counter() - start
        return report

    def _add_entities(self, entities: list[Entity], triples: list[Triple], known: set[str]) -> int:
        """COPY entities not in the store; MERGE text onto those already there."""
        new: dict[str, Entity] = {}
        updates = []
        for e in entities:
            if e.id in known:
                updates.append(e)
            else:
                new[e.id] = e
        for t in triples:
            for node in (t.head, t.tail):
                if node not in known and node not in new:
                    new[node] = Entity(node)
        if new:
            self._copy("Entity", pa.Table.from_pylist(entity_rows(new.values()), schema=_ENTITY_SCHEMA))
            known.update(new)
        if updates:
            self._write(cypher.MERGE_ENTITIES, {"rows": entity_rows(updates)})
        return len(new)

    def _add_relations(self, relations: list[Relation], triples: list[Triple], known: set[str]) -> int:
        new: dict[str, Relation] = {}
        updates = []
        for r in relations:
            if r.id in known:
                updates.append(r)
            else:
                new[r.id] = r
        for t in triples:
            if t.relation not in known and t.relation not in new:
                new[t.relation] = Relation(t.relation)
        if new:
            self._copy("Relation", pa.Table.from_pylist(relation_rows(new.values()), schema=_RELATION_SCHEMA))
            known.update(new)
        if updates:
            self._write(cypher.MERGE_RELATIONS, {"rows": relation_rows(updates)})
        return len(new)

    def upsert_entities(self, entities: Iterable[Entity]) -> int:
        self._require_writable()
        rows = entity_rows(entities)
        if rows:
            self._write(cypher.MERGE_ENTITIES, {"rows": rows})
        return len(rows)

    def upsert_facts(self, triples: Iterable[Triple], split: str | None = None) -> int:
        self._require_writable()
        triples = list(triples)
        if not triples:
            return 0
        ids = sorted({t.head for t in triples} | {t.tail for t in triples})
        rels = sorted({t.relation for t in triples})
        self._write("BEGIN TRANSACTION")
        try:
            self._write(cypher.MERGE_ENDPOINTS, {"ids": ids})
            self._write(cypher.MERGE_RELATION_IDS, {"ids": rels})
            self._write(_MERGE_FACTS, {"rows": triple_rows(triples, split)})
            self._write("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return len(triples)

    def clear(self) -> None:
        self._require_writable()
        self._write(cypher.DELETE_ALL)

    def _rollback(self) -> None:
        """Roll back the open transaction; the engine may already have done so after a failed statement."""
        with contextlib.suppress(RuntimeError):
            self._conn.execute("ROLLBACK")

    def _require_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"store {self.path} is open read-only")

    # -- reading --------------------------------------------------------------------------
    def stats(self) -> StoreStats:
        splits: dict[str, int] = {}
        for row in self._rows(cypher.COUNT_SPLITS):
            name = row["split"] or UNSPLIT
            splits[name] = splits.get(name, 0) + row["n"]
        return StoreStats(
            entities=self._rows(cypher.COUNT_ENTITIES)[0]["n"],
            relations=self._rows(cypher.COUNT_RELATIONS)[0]["n"],
            triples=sum(splits.values()),
            splits=dict(sorted(splits.items())),
        )

    def query(self, cypher_text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        ensure_read_only(cypher_text)
        return self._rows(cypher_text, params)

    def get_entities(self, ids: Sequence[str]) -> dict[str, Entity]:
        rows = self._rows(cypher.ENTITIES_BY_ID, {"ids": list(ids)})
        return {r["id"]: _entity(r) for r in rows}

    def iter_entities(self) -> Iterator[Entity]:
        for r in self._rows(cypher.ALL_ENTITIES):
            yield _entity(r)

    def iter_relations(self) -> Iterator[Relation]:
        for r in self._rows(cypher.ALL_RELATIONS):
            yield Relation(r["id"], r["label"], r["description"])

    def iter_facts(self, split: str | None = None) -> Iterator[Fact]:
        if split is None:
            rows = self._rows(cypher.ALL_FACTS)
        else:
            rows = self._rows(cypher.SPLIT_FACTS, {"split": split})
        for r in rows:
            yield Fact(**r)

    def incident_facts(self, ids: Sequence[str]) -> list[Fact]:
        params = {"ids": list(ids)}
        rows = self._rows(cypher.OUT_FACTS, params) + self._rows(cypher.IN_FACTS, params)
        return [Fact(**r) for r in rows]


def _fact_props(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("split", "source", "confidence", "time")}


def _entity(row: dict[str, Any]) -> Entity:
    return Entity(row["id"], row["label"], row["description"], tuple(row["types"] or ()))
