"""The knowledge-graph data model: entities, relations, triples with provenance, named splits."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

#: Canonical split names; readers map ``dev`` to ``valid``.
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True, slots=True)
class Provenance:
    """Where a fact came from: a source (file, document, extractor), a confidence and a time."""

    source: str | None = None
    confidence: float | None = None
    time: str | None = None


def provenance_fields(p: Provenance | None) -> dict[str, str | float | None]:
    """``source``, ``confidence`` and ``time`` of a fact's provenance (None each when unknown)."""
    return {"source": p.source if p else None, "confidence": p.confidence if p else None, "time": p.time if p else None}


@dataclass(frozen=True, slots=True)
class Triple:
    """A fact ``(head, relation, tail)`` over entity and relation ids."""

    head: str
    relation: str
    tail: str
    provenance: Provenance | None = None

    def key(self) -> tuple[str, str, str]:
        return (self.head, self.relation, self.tail)


@dataclass(slots=True)
class Entity:
    """A node: an id plus optional human-readable text and type ids."""

    id: str
    label: str | None = None
    description: str | None = None
    types: tuple[str, ...] = ()

    def text(self) -> str:
        """The best text for the entity: label and description, falling back to the id."""
        name = self.label or self.id
        return f"{name}: {self.description}" if self.description else name


@dataclass(slots=True)
class Relation:
    """A relation type with optional text."""

    id: str
    label: str | None = None
    description: str | None = None


@dataclass(slots=True)
class GraphChunk:
    """A slice of a graph for streaming import: entities, relations, and triples of one split."""

    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    triples: list[Triple] = field(default_factory=list)
    split: str | None = None


@dataclass
class KnowledgeGraph:
    """An in-memory graph: vocabularies with text, and triples per named split."""

    name: str = "kg"
    entities: dict[str, Entity] = field(default_factory=dict)
    relations: dict[str, Relation] = field(default_factory=dict)
    splits: dict[str, list[Triple]] = field(default_factory=dict)

    def add_triples(self, split: str, triples: Iterable[Triple]) -> None:
        """Append triples to ``split``, registering any entity or relation not seen yet."""
        bucket = self.splits.setdefault(split, [])
        ents, rels = self.entities, self.relations
        for t in triples:
            if t.head not in ents:
                ents[t.head] = Entity(t.head)
            if t.tail not in ents:
                ents[t.tail] = Entity(t.tail)
            if t.relation not in rels:
                rels[t.relation] = Relation(t.relation)
            bucket.append(t)

    @property
    def num_triples(self) -> int:
        return sum(len(v) for v in self.splits.values())

    def triples(self, split: str | None = None) -> Iterator[Triple]:
        """All triples, or those of one split."""
        names = [split] if split is not None else list(self.splits)
        for name in names:
            yield from self.splits.get(name, ())

    def split_sizes(self) -> dict[str, int]:
        return {name: len(ts) for name, ts in self.splits.items()}

    def chunks(self, size: int = 50_000) -> Iterator[GraphChunk]:
        """Stream the graph for import: vocabularies first, then triples split by split."""
        yield GraphChunk(entities=list(self.entities.values()), relations=list(self.relations.values()))
        for split, triples in self.splits.items():
            for start in range(0, len(triples), size):
                yield GraphChunk(triples=triples[start : start + size], split=split)

    @classmethod
    def from_chunks(cls, chunks: Iterable[GraphChunk], name: str = "kg") -> KnowledgeGraph:
        """Collect a chunk stream into memory (entity text from later chunks fills gaps)."""
        kg = cls(name=name)
        for chunk in chunks:
            for e in chunk.entities:
                merge_entity(kg.entities, e)
            for r in chunk.relations:
                old = kg.relations.get(r.id)
                kg.relations[r.id] = (
                    r if old is None else Relation(r.id, r.label or old.label, r.description or old.description)
                )
            if chunk.triples:
                kg.add_triples(chunk.split or "train", chunk.triples)
        return kg


def merge_entity(into: dict[str, Entity], e: Entity) -> None:
    """Insert ``e``, keeping non-empty fields of an existing entry where ``e`` has none."""
    old = into.get(e.id)
    if old is None:
        into[e.id] = e
        return
    into[e.id] = Entity(
        e.id,
        e.label or old.label,
        e.description or old.description,
        tuple(dict.fromkeys(old.types + e.types)),
    )
