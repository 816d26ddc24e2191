"""Import a named data set or a file/folder into a graph store: the library side of `kelm kg import`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kelm.errors import StoreError
from kelm.kg.io import ReadReport, iter_chunks, load_kg
from kelm.kg.model import GraphChunk, KnowledgeGraph
from kelm.kg.store.base import GraphStore, ImportReport

STREAMED_SUFFIXES = {".nt", ".ttl", ".tsv", ".csv", ".txt"}


@dataclass
class Source:
    """What to import: a graph in memory (folders, data sets) or a chunk stream (single big files)."""

    name: str
    chunks: Iterable[GraphChunk]
    total_triples: int | None
    read_report: ReadReport
    graph: KnowledgeGraph | None = None


def open_source(
    source: str | Path,
    *,
    data_dir: str | Path | None = None,
    skip_bad: bool = False,
    chunk_size: int = 50_000,
) -> Source:
    """Resolve ``source``: an existing file or folder, else a registered data-set name.

    A store holds a data set as published: valid/test triples naming an entity absent from train
    (as in WN18RR and FB15k-237) are imported too, and counted in a warning."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() in STREAMED_SUFFIXES:
        report = ReadReport()
        chunks = iter_chunks(path, skip_bad=skip_bad, chunk_size=chunk_size, report=report)
        return Source(path.name, chunks, None, report)
    from kelm.kg.datasets import graph_location

    path, types_dir = graph_location(source, data_dir)
    kg, report = load_kg(path, skip_bad=skip_bad, name=path.name, types_dir=types_dir, unseen="keep")
    for split, n in report.unseen.items():
        report.warn(f"{n:,} {split} triples name an entity or relation not in the train split (imported)")
    return Source(kg.name, kg.chunks(chunk_size), kg.num_triples, report, kg)


def import_source(
    store: GraphStore,
    source: Source,
    *,
    replace: bool = False,
    append: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import ``source`` atomically. A non-empty store needs ``replace`` or ``append`` to be said."""
    if replace and append:
        raise StoreError("choose one of replace and append, not both")
    if not (replace or append):
        held = store.stats()
        if held.triples or held.entities:
            raise StoreError(
                f"the store already holds {held.entities} entities and {held.triples} triples; "
                "pass --replace to overwrite it or --append to add to it"
            )
    return store.import_chunks(source.chunks, replace=replace, progress=progress)
