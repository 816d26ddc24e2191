"""Graphs by name: a registered data set (resolved, never downloaded) or a file or folder of triples.

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
    return load_kg(path, skip_bad=skip_bad, types_dir=types_dir, unseen=unseen)


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
