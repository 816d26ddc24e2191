"""LadybugDB (embedded Cypher, the continuation of Kùzu): kelm's default store.

A store is a folder holding the database file ``graph.lbug``. Bulk import streams each
chunk as an Arrow table through ``COPY``, all inside one transaction: an exception rolls it
back, and a killed process leaves only an uncommitted WAL that the next open discards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ladybug
import pyarrow as pa

from kelm.errors import StoreError
from kelm.kg.model import Entity, GraphChunk, Triple
from kelm.kg.store import cypher
from kelm.kg.store import documents as docs
from kelm.kg.store.base import GraphStore, ImportReport, ProgressFn, entity_rows, relation_rows, triple_rows
from kelm.kg.store.documents import ChangeReport, DocumentTx
from kelm.kg.store.planning import Vocabulary, plan_vocabulary

DB_FILE = "graph.lbug"

SCHEMA = (
    "CREATE NODE TABLE IF NOT EXISTS Entity(id STRING PRIMARY KEY, label STRING, description STRING, types STRING[])",
    "CREATE NODE TABLE IF NOT EXISTS Relation(id STRING PRIMARY KEY, label STRING, description STRING)",
    "CREATE REL TABLE IF NOT EXISTS FACT("
    "FROM Entity TO Entity, rel STRING, split STRING, source STRING, confidence DOUBLE, time STRING)",
    "CREATE NODE TABLE IF NOT EXISTS Document("
    "id STRING PRIMARY KEY, source STRING, sha256 STRING, chars INT64, extractor STRING, time STRING)",
    "CREATE NODE TABLE IF NOT EXISTS Evidence(id STRING PRIMARY KEY, document STRING, fact STRING, "
    "head STRING, rel STRING, tail STRING, sentence STRING, char_start INT64, char_end INT64, "
    "head_start INT64, head_end INT64, tail_start INT64, tail_end INT64, extractor STRING, score DOUBLE, "
    "time STRING)",
    "CREATE NODE TABLE IF NOT EXISTS ExtractedEntity(id STRING PRIMARY KEY)",
)

# A parameter field that is null in every row is typed STRING; cast it for the DOUBLE property.
_MERGE_FACTS = cypher.MERGE_FACTS.replace("coalesce(row.confidence,", "coalesce(CAST(row.confidence AS DOUBLE),")

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


def _evidence_type(name: str) -> pa.DataType:
    if name == "score":
        return pa.float64()
    return pa.int64() if name.endswith(("_start", "_end")) else pa.string()


_CREATE_SCHEMAS = {
    "Entity": _ENTITY_SCHEMA,
    "FACT": _FACT_SCHEMA,
    "ExtractedEntity": pa.schema([("id", pa.string())]),
    "Document": pa.schema([(name, pa.int64() if name == "chars" else pa.string()) for name in docs.DOCUMENT_FIELDS]),
    "Evidence": pa.schema([(name, _evidence_type(name)) for name in docs.EVIDENCE_FIELDS]),
}


class LadybugStore(GraphStore):
    """A graph store in an embedded LadybugDB database folder."""

    backend = "ladybug"

    @classmethod
    def connect(
        cls, path: str | Path, uri: str | None = None, read_only: bool = False, **options: object
    ) -> LadybugStore:
        """An embedded store lives in a folder: ``uri`` and server options do not apply."""
        return cls(path, read_only=read_only)

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
        except (RuntimeError, ValueError, TypeError) as err:  # the driver raises all three for bad input
            raise StoreError(f"LadybugDB: {err}") from None
        names = result.get_column_names()
        return [dict(zip(names, row, strict=True)) for row in result.get_all()]

    def _properties(self, value: Any) -> dict[str, Any] | None:
        """Nodes and edges come back as dicts with internal ``_ID`` and ``_LABEL`` keys."""
        if isinstance(value, dict) and "_ID" in value and "_LABEL" in value:
            return {k: v for k, v in value.items() if not k.startswith("_")}
        return None

    def _path(self, value: Any) -> tuple[list[Any], list[Any]] | None:
        if isinstance(value, dict) and "_NODES" in value and "_RELS" in value:
            return value["_NODES"], value["_RELS"]
        return None

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

    def _existing_ids(self, text: str) -> set[str]:
        return {row["id"] for row in self._rows(text)}

    # -- writing --------------------------------------------------------------------------
    def _import(
        self, chunks: Iterable[GraphChunk], replace: bool, report: ImportReport, progress: ProgressFn | None
    ) -> None:
        """One transaction: COPY for new rows, MERGE for text of known entities and relations."""
        self._write("BEGIN TRANSACTION")
        try:
            if replace:
                self._write(cypher.DELETE_ALL)
            known_e = self._existing_ids(cypher.ENTITY_IDS)
            known_r = self._existing_ids(cypher.RELATION_IDS)
            for chunk in chunks:
                vocab = plan_vocabulary(chunk, known_e, known_r)
                self._add_vocabulary(vocab)
                if chunk.triples:
                    rows = triple_rows(chunk.triples, chunk.split)
                    data = pa.Table.from_pylist(
                        [{"from": r["h"], "to": r["t"], "rel": r["r"], **_fact_props(r)} for r in rows],
                        schema=_FACT_SCHEMA,
                    )
                    self._copy("FACT", data)
                report.add(len(vocab.new_entities), len(vocab.new_relations), len(chunk.triples), progress)
            self._write("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _add_vocabulary(self, vocab: Vocabulary) -> None:
        """COPY entities and relations not in the store; MERGE text onto those already there."""
        if vocab.new_entities:
            rows = entity_rows(vocab.new_entities.values())
            self._copy("Entity", pa.Table.from_pylist(rows, schema=_ENTITY_SCHEMA))
        if vocab.old_entities:
            self._write(cypher.MERGE_ENTITIES, {"rows": entity_rows(vocab.old_entities)})
        if vocab.new_relations:
            rows = relation_rows(vocab.new_relations.values())
            self._copy("Relation", pa.Table.from_pylist(rows, schema=_RELATION_SCHEMA))
        if vocab.old_relations:
            self._write(cypher.MERGE_RELATIONS, {"rows": relation_rows(vocab.old_relations)})

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

    def _in_transaction(self, work: Callable[[DocumentTx], ChangeReport]) -> ChangeReport:
        self._write("BEGIN TRANSACTION")
        try:
            result = work(_Tx(self))
            self._write("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return result

    def _has_documents(self) -> bool:
        return "Evidence" in {row["name"] for row in self._rows("CALL show_tables() RETURN name")}

    def _rollback(self) -> None:
        """Roll back the open transaction; the engine may already have done so after a failed statement."""
        with contextlib.suppress(RuntimeError):
            self._conn.execute("ROLLBACK")

    def _require_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"store {self.path} is open read-only")


_FACT_PROPERTIES = ("split", "source", "confidence", "time")


def _fact_props(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in _FACT_PROPERTIES}


class _Tx:
    """Reads and writes inside the store's open transaction; new rows go in through COPY (a
    Cypher CREATE per row of a long UNWIND is far slower here)."""

    def __init__(self, store: LadybugStore):
        self.store = store
        self.rows = store._rows
        self.write = store._write

    def create(self, label: str, rows: list[dict[str, Any]]) -> None:
        if label == "FACT":
            rows = [{"from": r["h"], "to": r["t"], "rel": r["r"], **{k: r[k] for k in _FACT_PROPERTIES}} for r in rows]
        schema = _CREATE_SCHEMAS[label]
        self.store._copy(label, pa.Table.from_pylist(rows, schema=schema))
