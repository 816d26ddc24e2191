"""Steps shared by the streaming triple readers: the empty-file check and chunking."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

from kelm.errors import DataError
from kelm.kg.io.report import ReadReport
from kelm.kg.model import Entity, GraphChunk, Relation, Triple

#: Called with each triple and its line; returns whether to keep it (or raises).
TripleFilter = Callable[[Triple, int], bool]
#: ``(line, triple)`` pairs of a file; None stands for a statement that holds no triple.
Numbered = Iterable[tuple[int, Triple | None]]


class VocabularySource(Protocol):
    """Collects entity and relation text while triples are read (see `RdfMapper`)."""

    @property
    def pending(self) -> int: ...

    def take_vocabulary(self) -> tuple[list[Entity], list[Relation]]: ...


def no_triples_error(path: str | Path, report: ReadReport, skipped_before: int) -> DataError:
    """The error for a triple file that held no triples, noting skipped lines."""
    skipped = report.skipped.get(str(path), 0) - skipped_before
    note = f" ({skipped} bad lines skipped)" if skipped else ""
    return DataError(f"no triples in file{note}", path)


def require_triples(path: str | Path, report: ReadReport, numbered: Numbered) -> Iterator[tuple[int, Triple | None]]:
    """Pass ``numbered`` through; at its end raise `DataError` if it held no triple."""
    skipped_before = report.skipped.get(str(path), 0)
    count = 0
    for line, triple in numbered:
        if triple is not None:
            count += 1
        yield line, triple
    if count == 0:
        raise no_triples_error(path, report, skipped_before)


def dedupe_filter(path: str | Path, report: ReadReport, accept: TripleFilter | None = None) -> TripleFilter:
    """Keep the first occurrence of each ``(head, relation, tail)`` of one file (one split) and
    count the repeats in ``report``; then apply ``accept``. Holds a 16-byte digest per distinct
    triple, so a streamed file costs memory in its number of distinct triples."""
    seen: set[bytes] = set()

    def keep(triple: Triple, line: int) -> bool:
        key = hashlib.blake2b("\x00".join(triple.key()).encode("utf-8"), digest_size=16).digest()
        if key in seen:
            report.duplicate(path)
            return False
        seen.add(key)
        return accept is None or accept(triple, line)

    return keep


def chunk_numbered(
    numbered: Numbered,
    *,
    split: str,
    chunk_size: int,
    accept: TripleFilter | None = None,
    vocabulary: VocabularySource | None = None,
) -> Iterator[GraphChunk]:
    """Group triples into chunks of ``split`` with at most ``chunk_size`` triples.

    ``accept`` may drop or reject triples. Each chunk carries the entities and relations that
    ``vocabulary`` collected since the previous one; a chunk is also cut when they reach
    ``chunk_size``.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    triples: list[Triple] = []
    for line, triple in numbered:
        if triple is not None and (accept is None or accept(triple, line)):
            triples.append(triple)
        if len(triples) >= chunk_size or (vocabulary is not None and vocabulary.pending >= chunk_size):
            yield _chunk(triples, split, vocabulary)
            triples = []
    if triples or (vocabulary is not None and vocabulary.pending):
        yield _chunk(triples, split, vocabulary)


def _chunk(triples: list[Triple], split: str, vocabulary: VocabularySource | None) -> GraphChunk:
    entities, relations = vocabulary.take_vocabulary() if vocabulary is not None else ([], [])
    return GraphChunk(entities, relations, triples, split)
