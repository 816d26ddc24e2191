"""Extractions to facts with evidence: mentions linked to entities, relations to triples.

A mention is linked by the dictionary stage of `kelm.linking.EntityLinker` (an entity's label,
or its id read with ``_`` as spaces, compared after case and space normalisation). A mention
that matches nothing becomes a new entity: its id is the normalised text with ``_`` for spaces,
its label the text, its type the mention's type, so the same name in two documents is one
entity. A relation becomes the triple ``(head entity, relation type, tail entity)`` with one
`Evidence` row: the document, the sentence, the character spans, the extractor and the score.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from kelm.extract.documents import Document
from kelm.extract.extractor import Extraction, TextMention
from kelm.kg.model import Entity, Relation
from kelm.kg.store.documents import DocumentFacts, DocumentRecord, Evidence
from kelm.linking.linker import EntityLinker, normalize


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Link:
    """The entity a mention stands for; ``new`` when the store does not have it yet."""

    entity: str
    new: bool


class MentionLinker:
    """Mentions to entity ids, by dictionary lookup over the store's entities (see module docstring)."""

    def __init__(self, entities: Iterable[Entity]):
        ents = list(entities)
        labels = {e.id: e.label or e.id for e in ents}
        aliases = {e.id: [e.id.replace("_", " ")] for e in ents}
        self.names = {name: entity for name, (entity, _) in EntityLinker(labels, aliases).names.items()}

    def link(self, mention: TextMention) -> Link | None:
        """The mention's entity, or None when its text has no letters or digits."""
        key = normalize(mention.text)
        if not key:
            return None
        if key in self.names:
            return Link(self.names[key], False)
        return Link(key.replace(" ", "_"), True)


def document_facts(
    doc: Document,
    extraction: Extraction,
    linker: MentionLinker,
    extractor: str,
    threshold: float = 0.0,
    time: str | None = None,
) -> DocumentFacts:
    """The facts of one document's extraction, each relation scoring at least ``threshold``."""
    time = time or now()
    record = DocumentRecord(doc.id, str(doc.path), sha256(doc.text), len(doc.text), extractor, time)
    out = DocumentFacts(record)
    new: dict[str, Entity] = {}
    relations: set[str] = set()
    for rel in extraction.relations:
        if rel.score < threshold:
            continue
        head, tail = linker.link(rel.head), linker.link(rel.tail)
        if head is None or tail is None or head.entity == tail.entity:
            continue
        for link, mention in ((head, rel.head), (tail, rel.tail)):
            if link.new and link.entity not in new:
                new[link.entity] = Entity(link.entity, _label(mention.text), types=(mention.type,))
        sentence = extraction.sentences[rel.head.sentence]
        out.evidence.append(
            Evidence(
                document=doc.id,
                head=head.entity,
                relation=rel.type,
                tail=tail.entity,
                sentence=sentence.text,
                char_start=sentence.start,
                char_end=sentence.end,
                head_start=rel.head.start,
                head_end=rel.head.end,
                tail_start=rel.tail.start,
                tail_end=rel.tail.end,
                extractor=extractor,
                score=round(float(rel.score), 6),
                time=time,
            )
        )
        relations.add(rel.type)
    out.entities = list(new.values())
    out.relations = [Relation(r, r.replace("_", " ").lower()) for r in sorted(relations)]
    return out


def _label(text: str) -> str:
    """A mention's text without the punctuation a span may take along at its ends."""
    return text.strip(_EDGE_PUNCTUATION) or text


_EDGE_PUNCTUATION = " \t\n.,;:!?\"'()[]{}“”‘’"
