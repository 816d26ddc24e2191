"""Graph-store backends behind one interface; `open_store` picks one by name."""

from __future__ import annotations

from pathlib import Path

from kelm.errors import StoreError
from kelm.kg.store.base import Fact, GraphStore, ImportReport, StoreStats, Subgraph
from kelm.registry import Registry

#: Backend name → store class (`kelm.registry` idiom).
STORES: Registry[type[GraphStore]] = Registry(
    "store backend",
    {
        "ladybug": "kelm.kg.store.ladybug:LadybugStore",
        "falkordb": "kelm.kg.store.falkordb:FalkorDBStore",
        "neo4j": "kelm.kg.store.neo4j:Neo4jStore",
    },
    error=StoreError,
)
BACKENDS = ("ladybug", "falkordb", "neo4j")


def open_store(
    path: str | Path,
    backend: str = "ladybug",
    uri: str | None = None,
    read_only: bool = False,
    **options: object,
) -> GraphStore:
    """Open a store: a folder for LadybugDB, a graph name on a FalkorDB or Neo4j server at ``uri``."""
    return STORES.get(backend).connect(path, uri=uri, read_only=read_only, **options)


__all__ = ["BACKENDS", "STORES", "Fact", "GraphStore", "ImportReport", "StoreStats", "Subgraph", "open_store"]
