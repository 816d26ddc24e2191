"""Per-file streaming in any triple format: plain triples or `GraphChunk`s."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from kelm.kg.io.formats import DEFAULT_BASE_IRI, DEFAULT_CHUNK_SIZE, triple_format
from kelm.kg.io.lines import require_file
from kelm.kg.io.rdf import TripleFilter, chunk_rdf, iter_rdf_triples, no_triples_error
from kelm.kg.io.report import ReadReport
from kelm.kg.io.triples import iter_numbered_triples
from kelm.kg.model import GraphChunk, Triple


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
    return _iter_delimited_nonempty(path, delimiter, skip_bad, report)


def _iter_delimited_nonempty(
    path: Path, delimiter: str | None, skip_bad: bool, report: ReadReport
) -> Iterator[Triple]:
    skipped_before = report.skipped.get(str(path), 0)
    count = 0
    for _, triple in iter_numbered_triples(path, delimiter=delimiter, skip_bad=skip_bad, report=report):
        count += 1
        yield triple
    if count == 0:
        raise no_triples_error(path, report, skipped_before)


def chunk_file(
    path: str | Path,
    *,
    split: str = "train",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    skip_bad: bool = False,
    report: ReadReport | None = None,
    base_iri: str | None = DEFAULT_BASE_IRI,
    accept: TripleFilter | None = None,
) -> Iterator[GraphChunk]:
    """Stream one triple file as chunks of ``split``; ``accept`` may drop or reject triples."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    path = require_file(path)
    report = report if report is not None else ReadReport()
    if triple_format(path) != "delimited":
        yield from chunk_rdf(
            path,
            split=split,
            chunk_size=chunk_size,
            skip_bad=skip_bad,
            report=report,
            base_iri=base_iri,
            accept=accept,
        )
        return
    skipped_before = report.skipped.get(str(path), 0)
    count = 0
    batch: list[Triple] = []
    for line, triple in iter_numbered_triples(path, skip_bad=skip_bad, report=report):
        count += 1
        if accept is not None and not accept(triple, line):
            continue
        batch.append(triple)
        if len(batch) >= chunk_size:
            yield GraphChunk(triples=batch, split=split)
            batch = []
    if count == 0:
        raise no_triples_error(path, report, skipped_before)
    if batch:
        yield GraphChunk(triples=batch, split=split)
