"""Planning a chunk import against the ids a store already holds, shared by the backends."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kelm.kg.model import Entity, GraphChunk, Provenance, Relation, Triple
from kelm.kg.store import cypher
from kelm.kg.store.base import ImportReport, ProgressFn, entity_rows, relation_rows, triple_rows

T = TypeVar("T")

#: Runs one statement over its parameter rows (in batches where the backend needs them).
WriteFn = Callable[[str, list[dict[str, Any]]], None]


def batches(rows: list[T], size: int) -> Iterator[list[T]]:
    """``rows`` in slices of at most ``size``."""
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def collapse_entities(entities: Iterable[Entity]) -> list[Entity]:
    """One entity per id, as if each were upserted in turn (later non-empty fields win)."""
    out: dict[str, Entity] = {}
    for e in entities:
        old = out.get(e.id)
        if old is not None:
            e = Entity(e.id, _first(e.label, old.label), _first(e.description, old.description), e.types or old.types)
        out[e.id] = e
    return list(out.values())


def collapse_triples(triples: Iterable[Triple]) -> list[Triple]:
    """One triple per ``(head, relation, tail)``, as if each were upserted in turn.

    FalkorDB applies the SETs of one statement to a twice-matched edge in no sequential order.
    """
    out: dict[tuple[str, str, str], Triple] = {}
    for t in triples:
        old = out.get(t.key())
        if old is None or old.provenance is None:
            out[t.key()] = t
        elif t.provenance is not None:
            p, q = t.provenance, old.provenance
            prov = Provenance(_first(p.source, q.source), _first(p.confidence, q.confidence), _first(p.time, q.time))
            out[t.key()] = Triple(t.head, t.relation, t.tail, prov)
    return list(out.values())


@dataclass
class Vocabulary:
    """A chunk's entities and relations: new ones by id (created), known ones (text merged)."""

    new_entities: dict[str, Entity] = field(default_factory=dict)
    old_entities: list[Entity] = field(default_factory=list)
    new_relations: dict[str, Relation] = field(default_factory=dict)
    old_relations: list[Relation] = field(default_factory=list)


def plan_vocabulary(chunk: GraphChunk, known_entities: set[str], known_relations: set[str]) -> Vocabulary:
    """Sort a chunk's entities and relations (given, or only referenced by triples) into new and
    known ones; the ``known_*`` sets are updated with the new ids."""
    vocab = Vocabulary()
    new_e, new_r = vocab.new_entities, vocab.new_relations
    for e in chunk.entities:
        if e.id in known_entities:
            vocab.old_entities.append(e)
        else:
            new_e[e.id] = e
    for r in chunk.relations:
        if r.id in known_relations:
            vocab.old_relations.append(r)
        else:
            new_r[r.id] = r
    for t in chunk.triples:
        for node in (t.head, t.tail):
            if node not in known_entities and node not in new_e:
                new_e[node] = Entity(node)
        if t.relation not in known_relations and t.relation not in new_r:
            new_r[t.relation] = Relation(t.relation)
    known_entities.update(new_e)
    known_relations.update(new_r)
    return vocab


@dataclass
class ChunkWrites:
    """The statements (with parameter rows) that write one chunk, and how many ids are new."""

    statements: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    entities: int = 0
    relations: int = 0


def chunk_writes(chunk: GraphChunk, known_entities: set[str], known_relations: set[str]) -> ChunkWrites:
    """Plan a chunk for a store that holds ``known_*`` ids (the sets are updated).

    New entities and relations (given, or only referenced by triples) are CREATEd, text of
    known ones is MERGEd, and the triples are CREATEd as facts.
    """
    vocab = plan_vocabulary(chunk, known_entities, known_relations)
    plan = [
        (cypher.CREATE_ENTITIES, entity_rows(vocab.new_entities.values())),
        (cypher.MERGE_ENTITIES, entity_rows(collapse_entities(vocab.old_entities))),
        (cypher.CREATE_RELATIONS, relation_rows(vocab.new_relations.values())),
        (cypher.MERGE_RELATIONS, relation_rows(vocab.old_relations)),
        (cypher.CREATE_FACTS, triple_rows(chunk.triples, chunk.split)),
    ]
    return ChunkWrites([(text, rows) for text, rows in plan if rows], len(vocab.new_entities), len(vocab.new_relations))


def write_chunks(
    chunks: Iterable[GraphChunk],
    known_entities: set[str],
    known_relations: set[str],
    write: WriteFn,
    report: ImportReport,
    progress: ProgressFn | None = None,
) -> None:
    """Plan each chunk (see `chunk_writes`), hand its statements to ``write`` and count it."""
    for chunk in chunks:
        writes = chunk_writes(chunk, known_entities, known_relations)
        for text, rows in writes.statements:
            write(text, rows)
        report.add(writes.entities, writes.relations, len(chunk.triples), progress)
