"""Graphs by name: a registered data set (resolved, never downloaded), a file or folder of
triples, or an embedded store folder (as `kelm kg import` or `kelm extract` write it).

This is the one place that turns a name into a `KnowledgeGraph`; tasks, the demo and the CLI
all call `load_graph`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from kelm.kg.io import ReadReport, load_kg
from kelm.kg.model import KnowledgeGraph


def graph_location(name: str | Path, data_dir: str | Path | None = None) -> tuple[Path, Path | None]:
    """The file or folder ``name`` points to, and its entity-type folder (CoDEx) where it has one."""
    path = Path(name)
    if path.exists():
        return path, None
    from kelm.data import resolve, resolve_types

    return resolve(str(name), data_dir=data_dir), resolve_types(str(name), data_dir=data_dir)


def load_graph_report(
    name: str | Path,
    data_dir: str | Path | None = None,
    *,
    skip_bad: bool = False,
    unseen: Literal["reject", "keep"] = "reject",
) -> tuple[KnowledgeGraph, ReadReport]:
    """The graph ``name`` names (entity texts and types included where present) and its read report;
    ``skip_bad`` and ``unseen`` (valid/test triples naming what train lacks) as for `load_kg`."""
    path, types_dir = graph_location(name, data_dir)
    if is_store_folder(path):
        return store_graph(path), ReadReport()
    return load_kg(path, skip_bad=skip_bad, types_dir=types_dir, unseen=unseen)


def is_store_folder(path: Path) -> bool:
    """Whether ``path`` is an embedded (LadybugDB) store folder."""
    from kelm.kg.store.ladybug import DB_FILE

    return path.is_dir() and (path / DB_FILE).is_file()


def store_graph(path: Path) -> KnowledgeGraph:
    """The graph in an embedded store, as `kelm kg export` writes it; facts without a split train."""
    from kelm.kg.store import open_store
    from kelm.kg.store.base import UNSPLIT

    with open_store(path, "ladybug", read_only=True) as store:
        kg = store.export(name=path.name)
    if UNSPLIT in kg.splits:
        kg.splits.setdefault("train", []).extend(kg.splits.pop(UNSPLIT))
    return kg


def load_graph(
    name: str | Path,
    data_dir: str | Path | None = None,
    *,
    skip_bad: bool = False,
    unseen: Literal["reject", "keep"] = "reject",
) -> KnowledgeGraph:
    """The graph ``name`` names: a registered data set, or a file or folder of triples."""
    return load_graph_report(name, data_dir, skip_bad=skip_bad, unseen=unseen)[0]


__all__ = ["graph_location", "load_graph", "load_graph_report"]
