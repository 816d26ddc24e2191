"""RDF (N-Triples, Turtle) to the kelm model, streamed as triples or `GraphChunk`s.

Subjects and objects that are IRIs or blank nodes become entities, predicates relations.
Label and description literals become entity (or relation) text, ``rdf:type`` adds a type and
is kept as a triple, and any other literal-valued triple is counted and skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from rdflib import Literal
from rdflib.namespace import DCTERMS, OWL, RDF, RDFS, SKOS
from rdflib.term import Node

from kelm.errors import DataError
from kelm.kg.io.formats import DEFAULT_BASE_IRI, DEFAULT_CHUNK_SIZE, triple_format
from kelm.kg.io.iris import term_to_id
from kelm.kg.io.rdf_syntax import RdfStatement, iter_ntriples, iter_turtle
from kelm.kg.io.report import ReadReport
from kelm.kg.io.streams import chunk_numbered, require_triples
from kelm.kg.model import Entity, GraphChunk, Relation, Triple

LABEL_PREDICATES = frozenset(
    {str(RDFS.label), str(SKOS.prefLabel), "http://schema.org/name", "https://schema.org/name"}
)
DESCRIPTION_PREDICATES = frozenset(
    {
        str(RDFS.comment),
        str(DCTERMS.description),
        "http://schema.org/description",
        "https://schema.org/description",
    }
)
#: ``x rdf:type C`` with one of these classes declares ``x`` a relation instead of a fact.
PROPERTY_CLASSES = frozenset({str(RDF.Property), str(OWL.ObjectProperty)})
RDF_TYPE = str(RDF.type)


def _language_rank(literal: Literal) -> int:
    """0 for untagged or English text, 1 for regional English, 2 for other languages."""
    lang = (literal.language or "").lower()
    if lang in ("", "en"):
        return 0
    return 1 if lang.startswith("en-") else 2


class RdfMapper:
    """Turns rdflib triples into kelm triples, collecting entity and relation text on the side.

    Text is held only until `take_vocabulary` is called, so memory stays bounded when streaming.
    """

    def __init__(self, base_iri: str | None = DEFAULT_BASE_IRI, report: ReadReport | None = None):
        self.base_iri = base_iri
        self.report = report if report is not None else ReadReport()
        self.relation_ids: set[str] = set()
        self.entities: dict[str, Entity] = {}
        self.relations: dict[str, Relation] = {}
        self._ranks: dict[tuple[str, str], int] = {}

    def node_id(self, term: Node) -> str:
        return term_to_id(term, self.base_iri)

    def map(self, s: Node, p: Node, o: Node) -> Triple | None:
        """The kelm triple for ``(s, p, o)``, or None when it only carries text or is skipped."""
        predicate = str(p)
        if isinstance(o, Literal):
            if predicate in LABEL_PREDICATES:
                self._set_text(self.node_id(s), "label", o)
            elif predicate in DESCRIPTION_PREDICATES:
                self._set_text(self.node_id(s), "description", o)
            else:
                self.report.literals_skipped += 1
            return None
        head, tail = self.node_id(s), self.node_id(o)
        if predicate == RDF_TYPE:
            if str(o) in PROPERTY_CLASSES:
                self._declare_relation(head)
                return None
            self._add_type(head, tail)
        relation = self.node_id(p)
        self.relation_ids.add(relation)
        return Triple(head, relation, tail)

    @property
    def pending(self) -> int:
        """How many entities and relations hold text not yet taken."""
        return len(self.entities) + len(self.relations)

    def take_vocabulary(self) -> tuple[list[Entity], list[Relation]]:
        """The entities and relations with text collected so far, forgetting them."""
        entities, relations = list(self.entities.values()), list(self.relations.values())
        self.entities, self.relations, self._ranks = {}, {}, {}
        return entities, relations

    def _declare_relation(self, rid: str) -> None:
        self.relation_ids.add(rid)
        self.relations.setdefault(rid, Relation(rid))

    def _add_type(self, eid: str, type_id: str) -> None:
        entity = self.entities.setdefault(eid, Entity(eid))
        if type_id not in entity.types:
            entity.types = (*entity.types, type_id)

    def _set_text(self, node: str, field: str, literal: Literal) -> None:
        text = str(literal)
        if not text:
            return
        rank = _language_rank(literal)
        key = (node, field)
        old = self._ranks.get(key)
        if old is not None and old <= rank:
            return
        self._ranks[key] = rank
        if node in self.relation_ids:
            target: Entity | Relation = self.relations.setdefault(node, Relation(node))
        else:
            target = self.entities.setdefault(node, Entity(node))
        setattr(target, field, text)


def iter_rdf_statements(
    path: str | Path, *, skip_bad: bool = False, report: ReadReport | None = None
) -> Iterator[RdfStatement]:
    """``(line, s, p, o)`` rdflib terms of an N-Triples or Turtle file, by extension."""
    fmt = triple_format(path)
    if fmt == "nt":
        return iter_ntriples(path, skip_bad=skip_bad, report=report)
    if fmt == "turtle":
        return iter_turtle(path, skip_bad=skip_bad, report=report)
    raise DataError("not an RDF file (expected .nt or .ttl)", path)


def map_rdf(
    path: str | Path, mapper: RdfMapper, *, skip_bad: bool = False, report: ReadReport | None = None
) -> Iterator[tuple[int, Triple | None]]:
    """``(line, triple)`` for each statement of an RDF file; None where it only carries text."""
    for line, s, p, o in iter_rdf_statements(path, skip_bad=skip_bad, report=report):
        yield line, mapper.map(s, p, o)


def iter_rdf_chunks(
    path: str | Path,
    split: str = "train",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    skip_bad: bool = False,
    report: ReadReport | None = None,
    *,
    base_iri: str | None = DEFAULT_BASE_IRI,
) -> Iterator[GraphChunk]:
    """Stream an N-Triples or Turtle file as chunks of at most ``chunk_size`` triples.

    Each chunk carries the entities and relations whose text or types were read since the
    previous chunk. IRIs under ``base_iri`` are turned back into plain ids (None keeps them).
    """
    report = report if report is not None else ReadReport()
    mapper = RdfMapper(base_iri, report)
    numbered = require_triples(path, report, map_rdf(path, mapper, skip_bad=skip_bad, report=report))
    return chunk_numbered(numbered, split=split, chunk_size=chunk_size, vocabulary=mapper)


def iter_rdf_triples(
    path: str | Path,
    *,
    skip_bad: bool = False,
    report: ReadReport | None = None,
    base_iri: str | None = DEFAULT_BASE_IRI,
) -> Iterator[Triple]:
    """Stream the entity-to-entity triples of an RDF file; text literals are dropped."""
    report = report if report is not None else ReadReport()
    mapper = RdfMapper(base_iri, report)
    for _, triple in require_triples(path, report, map_rdf(path, mapper, skip_bad=skip_bad, report=report)):
        if triple is not None:
            yield triple
        elif mapper.pending >= DEFAULT_CHUNK_SIZE:
            mapper.take_vocabulary()
