"""Facts supported by documents: evidence, update and delete by document, on every backend.

Extraction writes three node labels beside the graph itself::

    (:Document {id, source, sha256, chars, extractor, time})
    (:Evidence {id, document, fact, head, rel, tail, sentence, char_start, char_end,
                head_start, head_end, tail_start, tail_end, extractor, score, time})
    (:ExtractedEntity {id})

An ``Evidence`` row says that one sentence of one document supports the fact ``head -rel-> tail``
(``fact`` is the three ids joined by tabs, for lookups). A fact that extraction created has
``source = "extracted"``; it lives exactly as long as some evidence supports it, and its
``confidence`` and ``time`` are the best score and the latest time of that evidence. A fact that
was imported keeps its own provenance: evidence only adds to it. An entity that extraction
created is listed in ``ExtractedEntity`` and is removed with its last fact.

`apply_changes` runs one batch of document writes and deletes through a backend's transaction
(`DocumentTx`): the store after it equals the store in which the deleted documents were never
extracted and the written ones were extracted only in their new version.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from kelm.errors import StoreError
from kelm.kg.model import Entity, Relation

#: ``FACT.source`` of a fact that extraction created (and may delete again).
EXTRACTED = "extracted"
FACT_KEY_SEP = "\t"


class DocumentTx(Protocol):
    """One atomic unit of work on a store: reads see the writes made before them."""

    def rows(self, text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...

    def write(self, text: str, params: dict[str, Any] | None = None) -> None: ...

    def create(self, label: str, rows: list[dict[str, Any]]) -> None:
        """Create nodes of ``label`` (or ``FACT`` edges) that are known to be new, one per row."""


class CypherTx(ABC):
    """A `DocumentTx` that creates through the CREATE statements below, in batches."""

    batch_size = 5_000

    @abstractmethod
    def rows(self, text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...

    @abstractmethod
    def write(self, text: str, params: dict[str, Any] | None = None) -> None: ...

    def create(self, label: str, rows: list[dict[str, Any]]) -> None:
        for start in range(0, len(rows), self.batch_size):
            self.write(CREATE[label], {"rows": rows[start : start + self.batch_size]})


@dataclass(frozen=True, slots=True)
class Evidence:
    """One sentence of one document supporting ``head -relation-> tail``; spans are character
    offsets into the document."""

    document: str
    head: str
    relation: str
    tail: str
    sentence: str
    char_start: int
    char_end: int
    head_start: int
    head_end: int
    tail_start: int
    tail_end: int
    extractor: str
    score: float
    time: str

    def fact(self) -> tuple[str, str, str]:
        return (self.head, self.relation, self.tail)

    def to_json(self) -> dict[str, Any]:
        """The evidence as the CLI prints it (spans as ``[start, end]`` pairs)."""
        return {
            "document": self.document,
            "head": self.head,
            "relation": self.relation,
            "tail": self.tail,
            "sentence": self.sentence,
            "span": [self.char_start, self.char_end],
            "head_span": [self.head_start, self.head_end],
            "tail_span": [self.tail_start, self.tail_end],
            "extractor": self.extractor,
            "score": self.score,
            "time": self.time,
        }


@dataclass(frozen=True, slots=True)
class DocumentRecord:
    """A document as the store remembers it."""

    id: str
    source: str | None
    sha256: str
    chars: int
    extractor: str
    time: str


@dataclass
class DocumentFacts:
    """What one document contributes: its record, the entities its mentions created (used only
    when the store lacks them), the relation types, and its evidence."""

    document: DocumentRecord
    evidence: list[Evidence] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)


@dataclass
class ChangeReport:
    """What a batch of document changes did to the store."""

    documents_written: int = 0
    documents_deleted: int = 0
    evidence_added: int = 0
    evidence_removed: int = 0
    facts_added: int = 0
    facts_removed: int = 0
    entities_added: int = 0
    entities_removed: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


SCHEMA_LABELS = ("Document", "Evidence", "ExtractedEntity")

EVIDENCE_FIELDS = (
    "id",
    "document",
    "fact",
    "head",
    "rel",
    "tail",
    "sentence",
    "char_start",
    "char_end",
    "head_start",
    "head_end",
    "tail_start",
    "tail_end",
    "extractor",
    "score",
    "time",
)
DOCUMENT_FIELDS = ("id", "source", "sha256", "chars", "extractor", "time")

EVIDENCE_COLUMNS = ", ".join(f"v.{name} AS {name}" for name in EVIDENCE_FIELDS)
DOCUMENT_COLUMNS = ", ".join(f"d.{name} AS {name}" for name in DOCUMENT_FIELDS)

ALL_DOCUMENTS = f"MATCH (d:Document) RETURN {DOCUMENT_COLUMNS} ORDER BY d.id"
DOCUMENTS_BY_ID = f"MATCH (d:Document) WHERE d.id IN $ids RETURN {DOCUMENT_COLUMNS}"
ALL_EVIDENCE = f"MATCH (v:Evidence) RETURN {EVIDENCE_COLUMNS} ORDER BY v.id"
EVIDENCE_OF_DOCUMENTS = f"MATCH (v:Evidence) WHERE v.document IN $docs RETURN {EVIDENCE_COLUMNS} ORDER BY v.id"
EVIDENCE_OF_FACTS = f"MATCH (v:Evidence) WHERE v.fact IN $facts RETURN {EVIDENCE_COLUMNS} ORDER BY v.id"
FACTS_OF_DOCUMENTS = "MATCH (v:Evidence) WHERE v.document IN $docs RETURN v.fact AS fact, count(*) AS n"
SUPPORT_OF_FACTS = (
    "MATCH (v:Evidence) WHERE v.fact IN $facts RETURN v.fact AS fact, max(v.score) AS score, max(v.time) AS time"
)
SUPPORT_OF_ALL = "MATCH (v:Evidence) RETURN v.fact AS fact, max(v.score) AS score, max(v.time) AS time"
FACTS_OF_HEADS = (
    "UNWIND $ids AS i MATCH (h:Entity {id: i})-[f:FACT]->(t:Entity) "
    "RETURN h.id AS h, f.rel AS r, t.id AS t, f.source AS source, f.confidence AS confidence, f.time AS time"
)
DELETE_EVIDENCE = "MATCH (v:Evidence) WHERE v.document IN $docs DELETE v"
DELETE_DOCUMENTS = "MATCH (d:Document) WHERE d.id IN $docs DELETE d"
CREATE_DOCUMENTS = (
    "UNWIND $rows AS row CREATE (:Document {id: row.id, source: row.source, sha256: row.sha256, "
    "chars: row.chars, extractor: row.extractor, time: row.time})"
)
CREATE_EVIDENCE = (
    "UNWIND $rows AS row CREATE (:Evidence {" + ", ".join(f"{name}: row.{name}" for name in EVIDENCE_FIELDS) + "})"
)
EXISTING_ENTITIES = "MATCH (e:Entity) WHERE e.id IN $ids RETURN e.id AS id"
CREATE_ENTITIES = (
    "UNWIND $rows AS row "
    "CREATE (:Entity {id: row.id, label: row.label, description: row.description, types: row.types})"
)
CREATE_MARKS = "UNWIND $rows AS row CREATE (:ExtractedEntity {id: row.id})"
MERGE_RELATIONS = (
    "UNWIND $rows AS row MERGE (r:Relation {id: row.id}) "
    "SET r.label = coalesce(r.label, row.label), r.description = coalesce(r.description, row.description)"
)
CREATE_FACTS = (
    "UNWIND $rows AS row MATCH (h:Entity {id: row.h}), (t:Entity {id: row.t}) "
    "CREATE (h)-[:FACT {rel: row.r, split: row.split, source: row.source, confidence: row.confidence, "
    "time: row.time}]->(t)"
)
DELETE_FACTS = (
    "UNWIND $rows AS row MATCH (h:Entity {id: row.h})-[f:FACT]->(t:Entity {id: row.t}) "
    "WHERE f.rel = row.r AND f.source = row.source DELETE f"
)
UPDATE_FACTS = (
    "UNWIND $rows AS row MATCH (h:Entity {id: row.h})-[f:FACT]->(t:Entity {id: row.t}) "
    "WHERE f.rel = row.r AND f.source = row.source SET f.confidence = row.confidence, f.time = row.time"
)
#: The creating statement of each label that `DocumentTx.create` takes (rows as the statement reads them).
CREATE = {
    "Document": CREATE_DOCUMENTS,
    "Evidence": CREATE_EVIDENCE,
    "Entity": CREATE_ENTITIES,
    "ExtractedEntity": CREATE_MARKS,
    "FACT": CREATE_FACTS,
}
EXTRACTED_ENTITIES = "MATCH (x:ExtractedEntity) WHERE x.id IN $ids RETURN x.id AS id"
FACT_DEGREES = "MATCH (e:Entity)-[f:FACT]-() WHERE e.id IN $ids RETURN e.id AS id, count(f) AS n"
DELETE_ENTITIES = "MATCH (e:Entity) WHERE e.id IN $ids DETACH DELETE e"
UNMARK_EXTRACTED = "MATCH (x:ExtractedEntity) WHERE x.id IN $ids DELETE x"


def fact_key(head: str, relation: str, tail: str) -> str:
    """The ``Evidence.fact`` string of a triple."""
    return FACT_KEY_SEP.join((head, relation, tail))


def split_key(key: str) -> tuple[str, str, str]:
    head, relation, tail = key.split(FACT_KEY_SEP)
    return head, relation, tail


def evidence_row(n: int, ev: Evidence) -> dict[str, Any]:
    """A CREATE_EVIDENCE row; ids are ``document<TAB>n`` so that each is unique in the store."""
    row = {name: getattr(ev, name) for name in EVIDENCE_FIELDS if name not in ("id", "fact", "rel")}
    return row | {"id": f"{ev.document}{FACT_KEY_SEP}{n}", "fact": fact_key(*ev.fact()), "rel": ev.relation}


def evidence_from_row(row: dict[str, Any]) -> Evidence:
    return Evidence(
        document=row["document"],
        head=row["head"],
        relation=row["rel"],
        tail=row["tail"],
        sentence=row["sentence"],
        char_start=int(row["char_start"]),
        char_end=int(row["char_end"]),
        head_start=int(row["head_start"]),
        head_end=int(row["head_end"]),
        tail_start=int(row["tail_start"]),
        tail_end=int(row["tail_end"]),
        extractor=row["extractor"],
        score=float(row["score"]),
        time=row["time"],
    )


def document_from_row(row: dict[str, Any]) -> DocumentRecord:
    return DocumentRecord(row["id"], row["source"], row["sha256"], int(row["chars"]), row["extractor"], row["time"])


def check_changes(writes: Sequence[DocumentFacts], deletes: Sequence[str]) -> None:
    """Refuse a batch that names a document twice, or evidence filed under another document."""
    seen: set[str] = set()
    for doc_id in [w.document.id for w in writes] + list(deletes):
        if not doc_id:
            raise StoreError("a document id must not be empty")
        if doc_id in seen:
            raise StoreError(f"document '{doc_id}' appears twice in one batch of changes")
        seen.add(doc_id)
    for w in writes:
        for ev in w.evidence:
            if ev.document != w.document.id:
                raise StoreError(f"evidence of document '{ev.document}' filed under '{w.document.id}'")
            if FACT_KEY_SEP in "".join(ev.fact()):
                raise StoreError(f"ids must not contain a tab: {ev.fact()!r}")


def apply_changes(
    tx: DocumentTx, writes: Sequence[DocumentFacts], deletes: Sequence[str], split: str | None
) -> ChangeReport:
    """Replace the evidence of the written documents, remove that of the deleted ones, and bring
    facts and extracted entities in line (see the module docstring). ``split`` is the split of
    facts that extraction creates."""
    report = ChangeReport(documents_written=len(writes))
    touched = [w.document.id for w in writes] + list(deletes)
    old_docs = {r["id"] for r in tx.rows(DOCUMENTS_BY_ID, {"ids": touched})}
    report.documents_deleted = sum(1 for d in deletes if d in old_docs)
    old = tx.rows(FACTS_OF_DOCUMENTS, {"docs": touched})
    report.evidence_removed = sum(int(r["n"]) for r in old)
    tx.write(DELETE_EVIDENCE, {"docs": touched})
    tx.write(DELETE_DOCUMENTS, {"docs": touched})

    evidence = [ev for w in writes for ev in w.evidence]
    affected = sorted({r["fact"] for r in old} | {fact_key(*ev.fact()) for ev in evidence})
    support = _support(tx, affected)  # what the other documents give
    for ev in evidence:
        key = fact_key(*ev.fact())
        best = support.get(key)
        support[key] = (max(best[0], ev.score), max(best[1], ev.time)) if best else (ev.score, ev.time)
    extracted, imported = _stored_facts(tx, affected)

    report.entities_added = _add_entities(tx, writes, evidence)
    _add_relations(tx, writes)
    new = [k for k in affected if k in support and k not in extracted and k not in imported]
    tx.create("FACT", [_fact_row(k, support[k], split=split) for k in new])
    report.facts_added = len(new)
    gone = [k for k in affected if k not in support and k in extracted]
    _write_all(tx, DELETE_FACTS, [_fact_row(k) for k in gone])
    report.facts_removed = len(gone)
    changed = [k for k in affected if k in support and k in extracted and extracted[k] != support[k]]
    _write_all(tx, UPDATE_FACTS, [_fact_row(k, support[k]) for k in changed])

    rows = [evidence_row(n, ev) for w in writes for n, ev in enumerate(w.evidence)]
    tx.create("Evidence", rows)
    tx.create("Document", [asdict(w.document) for w in writes])
    report.evidence_added = len(rows)
    report.entities_removed = _remove_orphans(tx, sorted({e for k in gone for e in split_key(k)[::2]}))
    return report


def _fact_row(key: str, support: tuple[float, str] | None = None, **extra: Any) -> dict[str, Any]:
    h, r, t = split_key(key)
    row = {"h": h, "r": r, "t": t, "source": EXTRACTED} | extra
    if support is not None:
        row |= {"confidence": float(support[0]), "time": support[1]}
    return row


def _write_all(tx: DocumentTx, text: str, rows: list[dict[str, Any]], size: int = 5_000) -> None:
    for start in range(0, len(rows), size):
        tx.write(text, {"rows": rows[start : start + size]})


#: Above this many facts, `_support` aggregates all evidence in one scan rather than look keys up
#: (a long ``IN`` list is compared row by row where no index covers it).
SCAN_ABOVE = 500


def _support(tx: DocumentTx, keys: Sequence[str]) -> dict[str, tuple[float, str]]:
    """Best score and latest time of the evidence the store holds for each of ``keys``."""
    if not keys:
        return {}
    if len(keys) > SCAN_ABOVE:
        wanted = set(keys)
        rows = [r for r in tx.rows(SUPPORT_OF_ALL) if r["fact"] in wanted]
    else:
        rows = tx.rows(SUPPORT_OF_FACTS, {"facts": list(keys)})
    return {r["fact"]: (float(r["score"]), r["time"]) for r in rows}


def _stored_facts(tx: DocumentTx, keys: Sequence[str]) -> tuple[dict[str, tuple[float, str]], set[str]]:
    """Which of ``keys`` the store has as extracted facts (with their confidence and time) and as
    other facts. Looked up from the heads: one index lookup each, then their edges."""
    wanted = set(keys)
    heads = sorted({split_key(k)[0] for k in keys})
    extracted: dict[str, tuple[float, str]] = {}
    imported: set[str] = set()
    for start in range(0, len(heads), 5_000):
        for f in tx.rows(FACTS_OF_HEADS, {"ids": heads[start : start + 5_000]}):
            key = fact_key(f["h"], f["r"], f["t"])
            if key not in wanted:
                continue
            if f["source"] != EXTRACTED:
                imported.add(key)
            else:
                conf = f["confidence"]
                extracted[key] = (float(conf) if conf is not None else float("nan"), f["time"])
    return extracted, imported


def _add_entities(tx: DocumentTx, writes: Sequence[DocumentFacts], evidence: Iterable[Evidence]) -> int:
    """Create the evidence's endpoints that the store lacks (with the text the documents give)."""
    needed = sorted({e for ev in evidence for e in (ev.head, ev.tail)})
    if not needed:
        return 0
    present = {r["id"] for r in tx.rows(EXISTING_ENTITIES, {"ids": needed})}
    given: dict[str, Entity] = {}
    for w in writes:
        for ent in w.entities:
            given.setdefault(ent.id, ent)
    new = [given.get(e, Entity(e)) for e in needed if e not in present]
    rows = [{"id": e.id, "label": e.label, "description": e.description, "types": list(e.types)} for e in new]
    tx.create("Entity", rows)
    tx.create("ExtractedEntity", [{"id": e.id} for e in new])
    return len(new)


def _add_relations(tx: DocumentTx, writes: Sequence[DocumentFacts]) -> None:
    used = {ev.relation for w in writes for ev in w.evidence}
    given = {r.id: r for w in writes for r in w.relations}
    rows = [{"id": r, "label": given[r].label if r in given else None, "description": None} for r in sorted(used)]
    if rows:
        tx.write(MERGE_RELATIONS, {"rows": rows})


def _remove_orphans(tx: DocumentTx, candidates: Sequence[str]) -> int:
    """Delete the entities extraction created that no fact touches any more."""
    if not candidates:
        return 0
    extracted = [r["id"] for r in tx.rows(EXTRACTED_ENTITIES, {"ids": list(candidates)})]
    if not extracted:
        return 0
    linked = {r["id"] for r in tx.rows(FACT_DEGREES, {"ids": extracted}) if r["n"]}
    orphans = sorted(set(extracted) - linked)
    if orphans:
        tx.write(DELETE_ENTITIES, {"ids": orphans})
        tx.write(UNMARK_EXTRACTED, {"ids": orphans})
    return len(orphans)
