"""Writers: a TSV data-set folder and N-Triples, both readable back into an identical graph."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from kelm.atomic import atomic_path
from kelm.errors import DataError
from kelm.kg.io.codex import ENTITY_TYPES
from kelm.kg.io.folder import SPLIT_STEMS, scan_split_files
from kelm.kg.io.formats import DEFAULT_BASE_IRI
from kelm.kg.io.iris import id_to_nt, is_absolute_iri, nt_literal
from kelm.kg.io.rdf import RDF_TYPE
from kelm.kg.io.text import (
    ENTITY_DESCRIPTIONS,
    ENTITY_IDS,
    ENTITY_LABELS,
    RELATION_DESCRIPTIONS,
    RELATION_IDS,
    RELATION_LABELS,
    TEXT_STEMS,
)
from kelm.kg.model import KnowledgeGraph, Triple

_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_RDF_PROPERTY = "<http://www.w3.org/1999/02/22-rdf-syntax-ns#Property>"
_RDFS_LABEL = "<http://www.w3.org/2000/01/rdf-schema#label>"
_RDFS_COMMENT = "<http://www.w3.org/2000/01/rdf-schema#comment>"


@contextmanager
def atomic_text_writer(path: str | Path) -> Iterator[TextIO]:
    """A UTF-8 text handle whose content replaces ``path`` only if the block succeeds."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="\n") as handle:
        yield handle


def _check_id(value: str, what: str) -> str:
    """``value`` if a TSV line can hold it unchanged, else a `DataError`."""
    if not value or value != value.strip() or any(c in value for c in "\t\r\n"):
        problem = "it is empty or holds a tab, a line break or edge spaces"
        raise DataError(f"{what} id {value!r} cannot be written to TSV: {problem}")
    return value


def _check_ids(kg: KnowledgeGraph, splits: dict[str, list[Triple]]) -> None:
    """Check every id before anything is written, so a bad id leaves the folder untouched."""
    for eid in kg.entities:
        _check_id(eid, "entity")
    for rid in kg.relations:
        _check_id(rid, "relation")
    for triples in splits.values():
        for t in triples:
            if t.head not in kg.entities or t.tail not in kg.entities or t.relation not in kg.relations:
                _check_id(t.head, "entity")
                _check_id(t.relation, "relation")
                _check_id(t.tail, "entity")


def _one_line(text: str) -> str:
    """Text on one line: line breaks become spaces (tabs are fine after the id)."""
    return _LINE_BREAK.sub(" ", text)


def _check_split_names(splits: list[str], folder: Path) -> None:
    """Each split must get a file name that reads back as itself, and no other split file may
    linger in ``folder`` (it would be read back as part of the graph)."""
    for split in splits:
        if not _SPLIT_NAME.fullmatch(split) or split in TEXT_STEMS or SPLIT_STEMS.get(split, split) != split:
            raise DataError(f"split name {split!r} cannot be written as a file name that reads back", folder)
    for split, path in scan_split_files(folder) if folder.is_dir() else ():
        if split not in splits or path.name != f"{split}.tsv":
            raise DataError(f"{path.name} would be read back as the {split} split; write to an empty folder", folder)


def _write_pairs(path: Path, pairs: list[tuple[str, str]]) -> Path | None:
    """Write ``id<TAB>text`` lines, or remove a stale file when there is nothing to write."""
    if not pairs:
        path.unlink(missing_ok=True)
        return None
    with atomic_text_writer(path) as f:
        for key, text in pairs:
            f.write(f"{key}\t{_one_line(text)}\n")
    return path


def _write_ids(path: Path, ids: Iterable[str]) -> Path:
    with atomic_text_writer(path) as f:
        for value in ids:
            f.write(f"{value}\n")
    return path


def write_tsv(kg: KnowledgeGraph, folder: str | Path) -> list[Path]:
    """Write ``kg`` as a data-set folder that `load_kg` reads back into an identical graph.

    Writes ``<split>.tsv`` per non-empty split, ``entities.txt`` and ``relations.txt``, and
    when text exists ``entity2text.txt``, ``entity2textlong.txt``, ``relation2text.txt``,
    ``relation2textlong.txt``, plus ``entity2types.json`` for entity types. Line breaks in
    text become spaces. Every file is written atomically. Returns the files written.
    """
    folder = Path(folder)
    splits = {name: triples for name, triples in kg.splits.items() if triples}
    _check_ids(kg, splits)
    _check_split_names(list(splits), folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for split, triples in splits.items():
        with atomic_text_writer(folder / f"{split}.tsv") as f:
            for t in triples:
                f.write(f"{t.head}\t{t.relation}\t{t.tail}\n")
        written.append(folder / f"{split}.tsv")
    written.append(_write_ids(folder / ENTITY_IDS, kg.entities))
    written.append(_write_ids(folder / RELATION_IDS, kg.relations))
    ents, rels = kg.entities.values(), kg.relations.values()
    optional = [
        _write_pairs(folder / ENTITY_LABELS, [(e.id, e.label) for e in ents if e.label]),
        _write_pairs(folder / ENTITY_DESCRIPTIONS, [(e.id, e.description) for e in ents if e.description]),
        _write_pairs(folder / RELATION_LABELS, [(r.id, r.label) for r in rels if r.label]),
        _write_pairs(folder / RELATION_DESCRIPTIONS, [(r.id, r.description) for r in rels if r.description]),
        _write_types(folder / ENTITY_TYPES, {e.id: list(e.types) for e in ents if e.types}),
    ]
    written.extend(p for p in optional if p is not None)
    return written


def _write_types(path: Path, types: dict[str, list[str]]) -> Path | None:
    if not types:
        path.unlink(missing_ok=True)
        return None
    with atomic_text_writer(path) as f:
        json.dump(types, f, ensure_ascii=False)
        f.write("\n")
    return path


def _nt_line(s: str, p: str, o: str) -> str:
    return f"{s} {p} {o} .\n"


class _NTriplesTerms:
    """N-Triples spellings of ids under one base IRI."""

    def __init__(self, base_iri: str):
        if not is_absolute_iri(base_iri + "x"):
            raise DataError(f"base IRI {base_iri!r} is not an absolute IRI")
        self.base_iri = base_iri
        self.rdf_type = self.predicate(RDF_TYPE)

    def node(self, value: str) -> str:
        return id_to_nt(value, self.base_iri)

    def predicate(self, value: str) -> str:
        return id_to_nt(value, self.base_iri, allow_blank=False)

    def triple(self, t: Triple) -> str:
        return _nt_line(self.node(t.head), self.predicate(t.relation), self.node(t.tail))


def _vocabulary_lines(kg: KnowledgeGraph, terms: _NTriplesTerms) -> Iterator[str]:
    """Relation declarations and text, then entity text and types not already stated as triples."""
    for r in kg.relations.values():
        rel = terms.predicate(r.id)
        yield _nt_line(rel, terms.rdf_type, _RDF_PROPERTY)
        if r.label:
            yield _nt_line(rel, _RDFS_LABEL, nt_literal(r.label))
        if r.description:
            yield _nt_line(rel, _RDFS_COMMENT, nt_literal(r.description))
    typed = {(t.head, t.tail) for t in kg.triples() if t.relation == RDF_TYPE}
    for e in kg.entities.values():
        ent = terms.node(e.id)
        if e.label:
            yield _nt_line(ent, _RDFS_LABEL, nt_literal(e.label))
        if e.description:
            yield _nt_line(ent, _RDFS_COMMENT, nt_literal(e.description))
        for type_id in e.types:
            if (e.id, type_id) not in typed:
                yield _nt_line(ent, terms.rdf_type, terms.node(type_id))


def write_ntriples(
    source: KnowledgeGraph | Iterable[Triple], path: str | Path, *, base_iri: str = DEFAULT_BASE_IRI
) -> int:
    """Write triples (of all splits, for a graph) as N-Triples; returns the number of lines.

    Ids that are absolute IRIs are written as they are, ``_:label`` ids as blank nodes, and
    other ids percent-encoded under ``base_iri``; reading back with the same base restores
    them. For a graph, relations are declared ``rdf:Property``, entity and relation labels
    and descriptions become ``rdfs:label`` / ``rdfs:comment``, and entity types ``rdf:type``
    (unless already a triple). Entities with no triple, text or type are not representable,
    and all splits are read back as ``train``. The file is written atomically.
    """
    terms = _NTriplesTerms(base_iri)
    count = 0
    with atomic_text_writer(path) as f:
        if isinstance(source, KnowledgeGraph):
            for line in _vocabulary_lines(source, terms):
                f.write(line)
                count += 1
            triples: Iterable[Triple] = source.triples()
        else:
            triples = source
        for t in triples:
            f.write(terms.triple(t))
            count += 1
    return count
