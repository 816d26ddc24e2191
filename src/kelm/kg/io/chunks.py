"""Per-file streaming in any triple format: plain triples or `GraphChunk`s."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kelm.kg.io.formats import DEFAULT_BASE_IRI, DEFAULT_CHUNK_SIZE, triple_format
from kelm.kg.io.lines import require_file
from kelm.kg.io.rdf import RdfMapper, iter_rdf_triples, map_rdf
from kelm.kg.io.report import ReadReport
from kelm.kg.io.streams import Numbered, TripleFilter, chunk_numbered, dedupe_filter, require_triples
from kelm.kg.io.triples import iter_numbered_triples
from kelm.kg.model import GraphChunk, Triple


@dataclass(frozen=True)
class ReadOptions:
    """How files are read: bad lines skipped or fatal, chunk size, the report, the base IRI,
    and whether a triple repeated within one file is stored once (counted in the report)."""

    skip_bad: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    report: ReadReport = field(default_factory=ReadReport)
    base_iri: str | None = DEFAULT_BASE_IRI
    dedupe: bool = True

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be positive")


def iter_triples(
    path: str | Path,
    *,
    skip_bad: bool = False,
    report: ReadReport | None = None,
    delimiter: str | None = None,
    base_iri: str | None = DEFAULT_BASE_IRI,
) -> Iterator[Triple]:
    """Stream the triples of one file: ``.tsv``/``.txt`` (tab), ``.csv``, ``.nt`` or ``.ttl``.

    A missing file or unknown extension raises `DataError` at once; bad lines raise when
    reached (or are skipped and counted with ``skip_bad``), and an empty file raises at its end.
    """
    path = require_file(path)
    report = report if report is not None else ReadReport()
    if triple_format(path) != "delimited":
        return iter_rdf_triples(path, skip_bad=skip_bad, report=report, base_iri=base_iri)
    numbered = iter_numbered_triples(path, delimiter=delimiter, skip_bad=skip_bad, report=report)
    return (triple for _, triple in require_triples(path, report, numbered))


def chunk_file(
    path: str | Path, split: str, options: ReadOptions, accept: TripleFilter | None = None
) -> Iterator[GraphChunk]:
    """Stream one triple file as chunks of ``split``; ``accept`` may drop or reject triples.

    With ``options.dedupe`` a triple repeated within the file is kept once and the repeats are
    counted in ``options.report.duplicates`` (before ``accept`` sees them)."""
    path = require_file(path)
    if options.dedupe:
        accept = dedupe_filter(path, options.report, accept)
    mapper = None
    numbered: Numbered
    if triple_format(path) == "delimited":
        numbered = iter_numbered_triples(path, skip_bad=options.skip_bad, report=options.report)
    else:
        mapper = RdfMapper(options.base_iri, options.report)
        numbered = map_rdf(path, mapper, skip_bad=options.skip_bad, report=options.report)
    numbered = require_triples(path, options.report, numbered)
    yield from chunk_numbered(numbered, split=split, chunk_size=options.chunk_size, accept=accept, vocabulary=mapper)
