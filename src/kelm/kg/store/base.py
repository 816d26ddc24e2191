"""One graph-store interface over LadybugDB, FalkorDB and Neo4j.

The property-graph layout is the same on every backend::

    (:Entity {id, label, description, types})
    (:Relation {id, label, description})
    (:Entity)-[:FACT {rel, split, source, confidence, time}]->(:Entity)

Relation types are a property of one edge label so that every backend, including the
schema-first LadybugDB, stores any number of relations without schema changes.
"""

from __future__ import annotations

import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kelm.errors import ReadOnlyQueryError, StoreError
from kelm.kg.model import Entity, GraphChunk, KnowledgeGraph, Provenance, Relation, Triple
from kelm.kg.store import cypher
from kelm.kg.store import documents as docs
from kelm.kg.store.documents import ChangeReport, DocumentFacts, DocumentRecord, DocumentTx, Evidence

#: Called after each imported chunk with the number of triples it held.
ProgressFn = Callable[[int], None]

UNSPLIT = "unsplit"


@dataclass
class StoreStats:
    """Counts of entities, relation types and facts per split."""

    entities: int
    relations: int
    triples: int
    splits: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "entities": self.entities,
            "relations": self.relations,
            "triples": self.triples,
            "splits": dict(self.splits),
        }


@dataclass
class ImportReport:
    """What an import wrote."""

    entities: int = 0
    relations: int = 0
    triples: int = 0
    seconds: float = 0.0

    @property
    def triples_per_second(self) -> float:
        return self.triples / self.seconds if self.seconds > 0 else float("inf")

    def add(self, entities: int, relations: int, triples: int, progress: ProgressFn | None = None) -> None:
        """Count one imported chunk; ``progress`` hears of each chunk that holds triples."""
        self.entities += entities
        self.relations += relations
        if triples:
            self.triples += triples
            if progress is not None:
                progress(triples)


@dataclass(frozen=True, slots=True)
class Fact:
    """A stored triple with its split and provenance, as read back from a store."""

    head: str
    relation: str
    tail: str
    split: str | None = None
    source: str | None = None
    confidence: float | None = None
    time: str | None = None

    def triple(self) -> Triple:
        prov = None
        if self.source is not None or self.confidence is not None or self.time is not None:
            prov = Provenance(self.source, self.confidence, self.time)
        return Triple(self.head, self.relation, self.tail, prov)


@dataclass
class Subgraph:
    """Entities within k hops of the seeds and the facts among them, with each entity's hop distance."""

    seeds: list[str]
    entities: dict[str, Entity]
    facts: list[Fact]
    hops: dict[str, int]
    truncated: bool = False

    def to_json(self, facts_key: str = "triples") -> dict[str, Any]:
        """Seeds, entities by hop distance (with label and types), and the facts under ``facts_key``."""
        return {
            "seeds": self.seeds,
            "truncated": self.truncated,
            "entities": [
                {"id": e.id, "label": e.label, "hop": self.hops[e.id], "types": list(e.types)}
                for e in sorted(self.entities.values(), key=lambda e: (self.hops[e.id], e.id))
            ],
            facts_key: [{"head": f.head, "relation": f.relation, "tail": f.tail, "split": f.split} for f in self.facts],
        }


_WRITE_CLAUSE = re.compile(
    r"\b(CREATE|MERGE|SET|DELETE|DETACH|REMOVE|DROP|ALTER|COPY|LOAD|INSTALL|ATTACH|IMPORT|EXPORT|"
    r"CHECKPOINT|BEGIN|COMMIT|ROLLBACK|FOREACH)\b",
    re.IGNORECASE,
)
_STRINGS_AND_COMMENTS = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`|//[^\n]*|/\*.*?\*/", re.S)


def ensure_read_only(cypher: str) -> None:
    """Reject Cypher with a write clause (outside string literals and comments)."""
    m = _WRITE_CLAUSE.search(_STRINGS_AND_COMMENTS.sub(" ", cypher))
    if m:
        raise ReadOnlyQueryError(f"query is read-only: '{m.group(1).upper()}' is not allowed")


def triple_rows(triples: Sequence[Triple], split: str | None) -> list[dict[str, Any]]:
    """Parameter rows for the FACT-creating statements."""
    rows = []
    for t in triples:
        p = t.provenance
        rows.append(
            {
                "h": t.head,
                "r": t.relation,
                "t": t.tail,
                "split": split,
                "source": p.source if p else None,
                "confidence": p.confidence if p else None,
                "time": p.time if p else None,
            }
        )
    return rows


def entity_rows(entities: Iterable[Entity]) -> list[dict[str, Any]]:
    return [{"id": e.id, "label": e.label, "description": e.description, "types": list(e.types)} for e in entities]


def relation_rows(relations: Iterable[Relation]) -> list[dict[str, Any]]:
    return [{"id": r.id, "label": r.label, "description": r.description} for r in relations]


class GraphStore(ABC):
    """A knowledge graph held in a graph database."""

    backend: str = "abstract"

    @classmethod
    def connect(
        cls, path: str | Path, uri: str | None = None, read_only: bool = False, **options: object
    ) -> GraphStore:
        """Open the store named ``path`` (a folder, or a graph name on the server at ``uri``)."""
        return cls(str(path), uri=uri, read_only=read_only, **options)  # type: ignore[call-arg]

    #: Statement for facts entering a set of entities (a backend may need a planner-friendly form).
    in_facts_cypher: str = cypher.IN_FACTS
    in_neighbors_cypher: str = cypher.IN_NEIGHBORS

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> GraphStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    # -- writing ---------------------------------------------------------------------------
    def import_chunks(
        self, chunks: Iterable[GraphChunk], *, replace: bool = False, progress: ProgressFn | None = None
    ) -> ImportReport:
        """Bulk import, all or nothing: if any chunk fails the store is left as it was.

        Entities referenced by triples are created when missing. With ``replace`` the old
        content is removed inside the same transaction.
        """
        self._require_writable()
        report = ImportReport()
        start = time.perf_counter()
        self._import(chunks, replace, report, progress)
        report.seconds = time.perf_counter() - start
        return report

    @abstractmethod
    def _import(
        self, chunks: Iterable[GraphChunk], replace: bool, report: ImportReport, progress: ProgressFn | None
    ) -> None:
        """Write ``chunks`` atomically (see `import_chunks`), counting them into ``report``."""

    @abstractmethod
    def _require_writable(self) -> None:
        """Raise `StoreError` if the store is open read-only."""

    def import_graph(
        self, kg: KnowledgeGraph, *, replace: bool = False, progress: ProgressFn | None = None
    ) -> ImportReport:
        """Bulk import an in-memory graph (see `import_chunks`)."""
        return self.import_chunks(kg.chunks(), replace=replace, progress=progress)

    @abstractmethod
    def upsert_entities(self, entities: Iterable[Entity]) -> int:
        """Create entities or update their non-empty text fields. Returns how many were given."""

    @abstractmethod
    def upsert_facts(self, triples: Iterable[Triple], split: str | None = None) -> int:
        """Create facts, or update provenance of an existing ``(head, relation, tail)``."""

    @abstractmethod
    def clear(self) -> None:
        """Remove everything."""

    # -- documents: facts with evidence (see `kelm.kg.store.documents`) ---------------------
    def apply_documents(
        self,
        writes: Sequence[DocumentFacts] = (),
        deletes: Sequence[str] = (),
        *,
        split: str | None = "train",
    ) -> ChangeReport:
        """Write the documents in ``writes`` (replacing what they supported before) and delete those
        in ``deletes``, all or nothing. Facts that extraction creates go to ``split``."""
        self._require_writable()
        docs.check_changes(writes, deletes)
        if not writes and not deletes:
            return ChangeReport()
        return self._in_transaction(lambda tx: docs.apply_changes(tx, writes, deletes, split))

    @abstractmethod
    def _in_transaction(self, work: Callable[[DocumentTx], ChangeReport]) -> ChangeReport:
        """Run ``work`` atomically: every write it makes lands, or none does."""

    def _has_documents(self) -> bool:
        """Whether the store has the document labels (a store written before them may not)."""
        return True

    def documents(self, ids: Sequence[str] | None = None) -> list[DocumentRecord]:
        """The documents facts were extracted from, by id (all, or those in ``ids``)."""
        if not self._has_documents():
            return []
        if ids is None:
            rows = self._rows(docs.ALL_DOCUMENTS)
        else:
            rows = sorted(self._rows(docs.DOCUMENTS_BY_ID, {"ids": list(ids)}), key=lambda r: r["id"])
        return [docs.document_from_row(r) for r in rows]

    def evidence(
        self, documents: Sequence[str] | None = None, facts: Sequence[tuple[str, str, str]] | None = None
    ) -> list[Evidence]:
        """Evidence of some documents, of some facts, or all of it, in document order."""
        if not self._has_documents():
            return []
        if documents is not None:
            rows = self._rows(docs.EVIDENCE_OF_DOCUMENTS, {"docs": list(documents)})
        elif facts is not None:
            rows = self._rows(docs.EVIDENCE_OF_FACTS, {"facts": [docs.fact_key(*f) for f in facts]})
        else:
            rows = self._rows(docs.ALL_EVIDENCE)
        found = [docs.evidence_from_row(r) for r in rows]
        return sorted(found, key=lambda e: (e.document, e.char_start, e.head_start, e.tail_start, e.relation))

    # -- reading: the shared Cypher of `cypher`, run through `_rows` -------------------------
    @abstractmethod
    def _rows(self, text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run one read-only statement: rows keyed by the RETURN names, values as the driver gives them."""

    def _read_all(self, statements: Sequence[tuple[str, dict[str, Any] | None]]) -> list[list[dict[str, Any]]]:
        """The rows of several read statements; backends with transactions run them in one."""
        return [self._rows(text, params) for text, params in statements]

    def _properties(self, value: Any) -> dict[str, Any] | None:
        """The properties of a node or edge as `_rows` returns it; None for any other value."""
        return None

    def _path(self, value: Any) -> tuple[list[Any], list[Any]] | None:
        """The nodes and edges of a path as `_rows` returns it; None for any other value."""
        return None

    def _plain(self, value: Any) -> Any:
        """A query value as plain Python, the same on every backend.

        Nodes and edges become dicts of their non-null properties, paths become
        ``{"nodes": [...], "edges": [...]}``; lists and maps are converted inside.
        """
        props = self._properties(value)
        if props is not None:
            return {k: self._plain(v) for k, v in props.items() if v is not None}
        path = self._path(value)
        if path is not None:
            nodes, edges = path
            return {"nodes": [self._plain(n) for n in nodes], "edges": [self._plain(e) for e in edges]}
        if isinstance(value, list):
            return [self._plain(v) for v in value]
        if isinstance(value, dict):
            return {k: self._plain(v) for k, v in value.items()}
        return value

    def query(self, cypher_text: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run read-only Cypher; rows come back as dicts keyed by the RETURN names (see `_plain`)."""
        ensure_read_only(cypher_text)
        return [{k: self._plain(v) for k, v in row.items()} for row in self._rows(cypher_text, params)]

    def stats(self) -> StoreStats:
        """Entity, relation and per-split fact counts; facts without a split count as ``unsplit``."""
        entities, relations, split_rows = self._read_all(
            [(cypher.COUNT_ENTITIES, None), (cypher.COUNT_RELATIONS, None), (cypher.COUNT_SPLITS, None)]
        )
        splits: dict[str, int] = {}
        for row in split_rows:
            key = row["split"] or UNSPLIT
            splits[key] = splits.get(key, 0) + row["n"]
        return StoreStats(entities[0]["n"], relations[0]["n"], sum(splits.values()), dict(sorted(splits.items())))

    def get_entities(self, ids: Sequence[str]) -> dict[str, Entity]:
        """Entities by id (missing ids are absent from the result)."""
        return {r["id"]: _entity(r) for r in self._rows(cypher.ENTITIES_BY_ID, {"ids": list(ids)})}

    def iter_entities(self) -> Iterator[Entity]:
        """Every entity, by id."""
        for r in self._rows(cypher.ALL_ENTITIES):
            yield _entity(r)

    def iter_relations(self) -> Iterator[Relation]:
        """Every relation type, by id."""
        for r in self._rows(cypher.ALL_RELATIONS):
            yield Relation(r["id"], r["label"], r["description"])

    def iter_facts(self, split: str | None = None) -> Iterator[Fact]:
        """Every fact, or those of one split."""
        text, params = (cypher.ALL_FACTS, None) if split is None else (cypher.SPLIT_FACTS, {"split": split})
        for r in self._rows(text, params):
            yield Fact(**r)

    def incident_facts(self, ids: Sequence[str]) -> list[Fact]:
        """Facts with head or tail in ``ids`` (each once)."""
        params = {"ids": list(ids)}
        out, into = self._read_all([(cypher.OUT_FACTS, params), (self.in_facts_cypher, params)])
        return [Fact(**r) for r in out + into]

    # -- derived operations, shared by every backend ----------------------------------------
    def neighbor_ids(self, ids: Sequence[str]) -> dict[str, set[str]]:
        """For each of ``ids``, the entities one fact away in either direction."""
        params = {"ids": list(ids)}
        out, into = self._read_all([(cypher.OUT_NEIGHBORS, params), (self.in_neighbors_cypher, params)])
        found: dict[str, set[str]] = {}
        for row in out + into:
            found.setdefault(row["src"], set()).add(row["dst"])
        return found

    def neighbors(self, entity: str, direction: str = "both", limit: int | None = None) -> list[Fact]:
        """Facts touching ``entity``: ``out`` (entity is head), ``in`` (tail) or ``both``."""
        if direction not in ("out", "in", "both"):
            raise StoreError(f"direction must be out, in or both, not '{direction}'")
        if not self.get_entities([entity]):
            raise StoreError(f"unknown entity '{entity}'")
        facts = self.incident_facts([entity])
        if direction == "out":
            facts = [f for f in facts if f.head == entity]
        elif direction == "in":
            facts = [f for f in facts if f.tail == entity]
        facts.sort(key=lambda f: (f.head, f.relation, f.tail))
        return facts[:limit] if limit is not None else facts

    def subgraph(
        self,
        seeds: Sequence[str],
        hops: int = 2,
        max_entities: int | None = None,
        fanout: int | None = None,
        seed: int = 0,
    ) -> Subgraph:
        """The k-hop neighbourhood of ``seeds``: breadth-first over neighbour ids, then one query for the facts.

        Edges are followed in both directions; the result holds every fact among the reached
        entities (the induced subgraph). ``fanout`` keeps at most that many new neighbours per
        entity and hop, sampled with ``seed`` (as GNN neighbour samplers do). ``max_entities``
        caps the total, cutting the last hop in sorted order, and sets ``truncated``.
        """
        if hops < 0:
            raise StoreError("hops must be >= 0")
        if fanout is not None and fanout < 1:
            raise StoreError("fanout must be >= 1")
        seeds = list(dict.fromkeys(seeds))
        found = self.get_entities(seeds)
        missing = [s for s in seeds if s not in found]
        if missing:
            raise StoreError(f"unknown entit{'y' if len(missing) == 1 else 'ies'}: {', '.join(missing[:5])}")
        rng = random.Random(seed)
        dist = {s: 0 for s in seeds}
        frontier = list(seeds)
        truncated = False
        for hop in range(1, hops + 1):
            if not frontier:
                break
            candidates = self.neighbor_ids(frontier)
            new: set[str] = set()
            for node in frontier:
                found_here = sorted(n for n in candidates.get(node, ()) if n not in dist)
                if fanout is not None and len(found_here) > fanout:
                    found_here = rng.sample(found_here, fanout)
                new.update(found_here)
            ordered = sorted(new)
            if max_entities is not None and len(dist) + len(ordered) > max_entities:
                ordered = ordered[: max(0, max_entities - len(dist))]
                truncated = True
            for node in ordered:
                dist[node] = hop
            frontier = ordered
            if truncated:
                break
        facts = [Fact(**r) for r in self._rows(cypher.INNER_FACTS, {"ids": list(dist)})]
        facts.sort(key=lambda f: (dist[f.head] + dist[f.tail], f.head, f.relation, f.tail))
        return Subgraph(seeds, self.get_entities(list(dist)), facts, dist, truncated)

    def export(self, name: str = "kg") -> KnowledgeGraph:
        """Everything in the store as an in-memory graph; facts without a split go to ``unsplit``."""
        kg = KnowledgeGraph(name=name)
        for e in self.iter_entities():
            kg.entities[e.id] = e
        for r in self.iter_relations():
            kg.relations[r.id] = r
        for f in self.iter_facts():
            kg.add_triples(f.split or UNSPLIT, [f.triple()])
        return kg


def _entity(row: dict[str, Any]) -> Entity:
    return Entity(row["id"], row["label"], row["description"], tuple(row["types"] or ()))
