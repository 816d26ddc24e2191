"""Data-set loading: a folder of split files plus text files, or a single triple file."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from kelm.errors import DataError
from kelm.kg.io.chunks import ReadOptions, chunk_file
from kelm.kg.io.codex import ENTITY_TYPES, read_entity_types
from kelm.kg.io.formats import DEFAULT_BASE_IRI, DEFAULT_CHUNK_SIZE, TRIPLE_SUFFIXES, triple_format
from kelm.kg.io.lines import reject
from kelm.kg.io.report import ReadReport
from kelm.kg.io.streams import TripleFilter
from kelm.kg.io.text import (
    ENTITY_IDS,
    RELATION_IDS,
    TEXT_STEMS,
    read_entity_text,
    read_ids,
    read_relation_text,
)
from kelm.kg.model import Entity, GraphChunk, KnowledgeGraph, Relation, Triple, merge_entity

#: File stems of the standard splits; ``dev`` is the validation split.
SPLIT_STEMS = {"train": "train", "valid": "valid", "dev": "valid", "test": "test"}
#: Splits whose entities and relations are checked against train.
EVALUATION_SPLITS = ("valid", "test")
#: What a folder read does with a valid/test triple naming an entity or relation absent from train:
#: ``reject`` it (a `DataError`, or with ``skip_bad`` a skipped line), or ``keep`` it (counted in
#: `ReadReport.unseen`, the entity joining the vocabulary, as LibKGE loads WN18RR and FB15k-237).
UnseenRead = Literal["reject", "keep"]
UNSEEN_READS = ("reject", "keep")
#: Besides the standard names, any other ``<name>.tsv`` in a folder is a split called ``name``.
EXTRA_SPLIT_SUFFIX = ".tsv"


def scan_split_files(folder: str | Path) -> list[tuple[str, Path]]:
    """``(split, file)`` for every file of ``folder`` that `load_kg` reads as a split."""
    found = []
    for path in sorted(Path(folder).iterdir()):
        stem, suffix = path.stem, path.suffix.lower()
        if not path.is_file() or stem.startswith("."):
            continue
        if stem in SPLIT_STEMS and suffix in TRIPLE_SUFFIXES:
            found.append((SPLIT_STEMS[stem], path))
        elif suffix == EXTRA_SPLIT_SUFFIX and stem not in TEXT_STEMS:
            found.append((stem, path))
    return found


def find_split_files(folder: str | Path) -> dict[str, Path]:
    """``split -> file`` for a data-set folder, train first, then valid, test and the rest."""
    folder = Path(folder)
    found: dict[str, Path] = {}
    for split, path in scan_split_files(folder):
        if split in found:
            raise DataError(f"two files for the {split} split: {found[split].name} and {path.name}", folder)
        found[split] = path
    if "train" not in found:
        names = ", ".join(f"train{s}" for s in TRIPLE_SUFFIXES)
        raise DataError(f"no train split found (expected one of {names})", folder)
    order = ["train", *EVALUATION_SPLITS]
    return dict(sorted(found.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else 3, kv[0])))


class _Vocabulary:
    """Entity and relation ids seen in triples."""

    def __init__(self) -> None:
        self.entities: set[str] = set()
        self.relations: set[str] = set()

    def add(self, triples: Iterable[Triple]) -> None:
        for t in triples:
            self.entities.add(t.head)
            self.entities.add(t.tail)
            self.relations.add(t.relation)


def unseen_problem(triple: Triple, entities: set[str], relations: set[str]) -> str | None:
    """Why ``triple`` names something absent from train (``entities``, ``relations``), or None."""
    for eid in (triple.head, triple.tail):
        if eid not in entities:
            return f"entity {eid!r} does not occur in the train split"
    if triple.relation not in relations:
        return f"relation {triple.relation!r} does not occur in the train split"
    return None


def _unseen_filter(
    train: _Vocabulary, path: Path, split: str, dropped: list[int], options: ReadOptions, unseen: UnseenRead
) -> TripleFilter:
    """Reject (or drop and count) triples naming an entity or relation absent from train; with
    ``unseen="keep"`` keep them and count them per split in the report."""

    def accept(triple: Triple, line: int) -> bool:
        problem = unseen_problem(triple, train.entities, train.relations)
        if problem is None:
            return True
        if unseen == "keep":
            options.report.unseen[split] = options.report.unseen.get(split, 0) + 1
            return True
        reject(problem, path, line, skip_bad=options.skip_bad, report=options.report)
        dropped[0] += 1
        return False

    return accept


def _text_chunks(
    seen: _Vocabulary, text_folder: Path | None, types_source: Path | None, options: ReadOptions
) -> Iterator[GraphChunk]:
    """Text and types for the ids in the graph (plus ids listed in entities/relations.txt)."""
    skip_bad, report = options.skip_bad, options.report
    entities: dict[str, Entity] = {}
    relations: dict[str, Relation] = {}
    if text_folder is not None:
        listed_e = set(_listed_ids(text_folder / ENTITY_IDS, skip_bad, report))
        listed_r = set(_listed_ids(text_folder / RELATION_IDS, skip_bad, report))
        texts = read_entity_text(text_folder, skip_bad=skip_bad, report=report)
        entities = {k: e for k, e in texts.items() if k in seen.entities or k in listed_e}
        _warn_unmatched(texts.values(), entities, "entity text files", report)
        relation_texts = read_relation_text(text_folder, skip_bad=skip_bad, report=report)
        relations = {k: r for k, r in relation_texts.items() if k in seen.relations or k in listed_r}
        _warn_unmatched(relation_texts.values(), relations, "relation text files", report)
        seen.entities.update(entities)
    if types_source is not None:
        types = read_entity_types(types_source, skip_bad=skip_bad, report=report)
        matched = 0
        for eid, type_ids in types.items():
            if eid in seen.entities:
                merge_entity(entities, Entity(eid, types=type_ids))
                matched += 1
        if types and not matched:
            report.warn(f"no entity of {types_source} occurs in the graph")
    if relations:
        yield GraphChunk(relations=list(relations.values()))
    values = list(entities.values())
    for start in range(0, len(values), options.chunk_size):
        yield GraphChunk(entities=values[start : start + options.chunk_size])


def _listed_ids(path: Path, skip_bad: bool, report: ReadReport) -> list[str]:
    return read_ids(path, skip_bad=skip_bad, report=report) if path.is_file() else []


def _warn_unmatched(items: Iterable[Entity | Relation], kept: Iterable[str], what: str, report: ReadReport) -> None:
    """Warn when text files name ids but none of them is in the graph (likely an id mismatch)."""
    kept = set(kept)
    with_text = [x.id for x in items if x.label or x.description]
    if with_text and not any(i in kept for i in with_text):
        report.warn(f"none of the {len(with_text)} ids with text in the {what} occurs in the graph")


def _resolve_types(path: Path, types_dir: str | Path | None) -> Path | None:
    if types_dir is not None:
        return Path(types_dir)
    if path.is_dir() and (path / ENTITY_TYPES).is_file():
        return path / ENTITY_TYPES
    return None


def _iter_folder(
    folder: Path, files: dict[str, Path], types_dir: str | Path | None, options: ReadOptions, unseen: UnseenRead
) -> Iterator[GraphChunk]:
    seen, train = _Vocabulary(), _Vocabulary()
    for split, path in files.items():
        dropped = [0]
        accept = None
        if split in EVALUATION_SPLITS:
            accept = _unseen_filter(train, path, split, dropped, options, unseen)
        for chunk in chunk_file(path, split, options, accept):
            seen.add(chunk.triples)
            seen.entities.update(e.id for e in chunk.entities)
            seen.relations.update(r.id for r in chunk.relations)
            if split == "train":
                train.add(chunk.triples)
            yield chunk
        if dropped[0]:
            options.report.warn(f"{dropped[0]} triples of {path} dropped: entity or relation not in train")
    yield from _text_chunks(seen, folder, _resolve_types(folder, types_dir), options)


def _iter_file(path: Path, split: str, types_dir: str | Path | None, options: ReadOptions) -> Iterator[GraphChunk]:
    seen = _Vocabulary()
    for chunk in chunk_file(path, split, options):
        if types_dir is not None:
            seen.add(chunk.triples)
            seen.entities.update(e.id for e in chunk.entities)
        yield chunk
    if types_dir is not None:
        yield from _text_chunks(seen, None, Path(types_dir), options)


def iter_chunks(
    path: str | Path,
    *,
    skip_bad: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    report: ReadReport | None = None,
    split: str = "train",
    base_iri: str | None = DEFAULT_BASE_IRI,
    types_dir: str | Path | None = None,
    unseen: UnseenRead = "reject",
) -> Iterator[GraphChunk]:
    """Stream a triple file (``.tsv``/``.txt``/``.csv``/``.nt``/``.ttl``) or a data-set folder.

    Memory stays bounded by ``chunk_size`` (plus the set of ids when a folder's valid/test
    splits are checked against train, or text and types are matched to the graph, and a digest
    per distinct triple of the file being read, to store a repeated line once). A file's
    triples all go to ``split``. Text and types from side files come in chunks at the end.
    ``unseen`` says what happens to a folder's valid/test triples that name an entity or
    relation absent from train (see `UnseenRead`).
    """
    if unseen not in UNSEEN_READS:
        raise ValueError(f"unseen must be one of {', '.join(UNSEEN_READS)}, not {unseen!r}")
    options = ReadOptions(skip_bad, chunk_size, report if report is not None else ReadReport(), base_iri)
    path = Path(path)
    if not path.exists():
        raise DataError("file or folder not found", path)
    if path.is_dir():
        return _iter_folder(path, find_split_files(path), types_dir, options, unseen)
    triple_format(path)
    return _iter_file(path, split, types_dir, options)


def _relations_from_entities(kg: KnowledgeGraph) -> None:
    """Move text read for a relation IRI before it was used as a predicate onto the relation."""
    nodes = _Vocabulary()
    nodes.add(kg.triples())
    for eid in [e for e in kg.entities if e in kg.relations and e not in nodes.entities]:
        entity, relation = kg.entities.pop(eid), kg.relations[eid]
        kg.relations[eid] = Relation(eid, relation.label or entity.label, relation.description or entity.description)


def load_kg(
    path: str | Path,
    *,
    skip_bad: bool = False,
    name: str | None = None,
    types_dir: str | Path | None = None,
    base_iri: str | None = DEFAULT_BASE_IRI,
    unseen: UnseenRead = "reject",
) -> tuple[KnowledgeGraph, ReadReport]:
    """Load a data set into memory: a folder (train/valid|dev/test splits with text files) or
    one triple file (all in ``train``).

    By default valid/test triples must only use entities and relations of train. With
    ``skip_bad``, malformed lines and such triples are dropped and counted in the report instead
    of raising. With ``unseen="keep"`` such triples are kept (their entities join the graph) and
    counted per split in ``report.unseen``. A triple repeated within one file is stored once
    (``report.duplicates``); one repeated across splits stays in each split, as published.
    Entities without a label keep ``label=None`` (`Entity.text` falls back to the id); they
    are counted in a warning.
    """
    path = Path(path)
    report = ReadReport()
    chunks = iter_chunks(path, skip_bad=skip_bad, report=report, base_iri=base_iri, types_dir=types_dir, unseen=unseen)
    kg = KnowledgeGraph.from_chunks(chunks, name=name or (path.name if path.is_dir() else path.stem))
    if path.is_file() and triple_format(path) != "delimited":
        _relations_from_entities(kg)
    unlabeled = sum(1 for e in kg.entities.values() if not e.label)
    if unlabeled:
        report.warn(f"{unlabeled} entities have no label; using their id")
    return kg, report
