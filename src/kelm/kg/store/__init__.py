"""Graph-store backends behind one interface; `open_store` picks one by name."""

from __future__ import annotations

from pathlib import Path

from kelm.errors import StoreError
from kelm.kg.store.base import Fact, GraphStore, ImportReport, StoreStats, Subgraph

BACKENDS = ("ladybug", "falkordb", "neo4j")


def open_store(
    path: str | Path,
    backend: str = "ladybug",
    uri: str | None = None,
    read_only: bool = False,
    **options: object,
) -> GraphStore:
    """Open a store: a folder for LadybugDB, a graph name on a FalkorDB or Neo4j server at ``uri``."""
    if backend == "ladybug":
        from kelm.kg.store.ladybug import LadybugStore

        return LadybugStore(path, read_only=read_only)
    if backend == "falkordb":
        from kelm.kg.store.falkordb import FalkorDBStore

        return FalkorDBStore(str(path), uri=uri, read_only=read_only, **options)
    if backend == "neo4j":
        from kelm.kg.store.neo4j import Neo4jStore

        return Neo4jStore(str(path), uri=uri, read_only=read_only, **options)
    raise StoreError(f"unknown store backend '{backend}' (choose one of: {', '.join(BACKENDS)})")


__all__ = ["BACKENDS", "Fact", "GraphStore", "ImportReport", "StoreStats", "Subgraph", "open_store"]
