"""The main job: import the bundled UMLS graph (with entity names and descriptions) into the
embedded store, then show its statistics and a sample 2-hop neighbourhood."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from kelm.atomic import write_text_atomic
from kelm.kg.importer import import_source, open_source
from kelm.kg.store import open_store
from kelm.kg.store.base import ImportReport, StoreStats, Subgraph

DEMO_DATASET = "umls"
DEMO_SEEDS = ("virus",)


@dataclass
class DemoResult:
    store: Path
    report: ImportReport
    stats: StoreStats
    subgraph: Subgraph


def run_demo(store: str | Path, out: str | Path | None = None, hops: int = 2) -> DemoResult:
    """Import the demo graph into a LadybugDB store at ``store`` (replacing its content)."""
    from kelm.data import bundled_path

    source = open_source(bundled_path(DEMO_DATASET))
    with open_store(store, backend="ladybug") as gs:
        report = import_source(gs, source, replace=True)
        stats = gs.stats()
        sg = gs.subgraph(list(DEMO_SEEDS), hops=hops, fanout=3)
    result = DemoResult(Path(store), report, stats, sg)
    if out is not None:
        payload = {
            "dataset": DEMO_DATASET,
            "store": str(store),
            "stats": stats.to_dict(),
            "import_seconds": report.seconds,
            "subgraph_entities": len(sg.entities),
            "subgraph_facts": len(sg.facts),
        }
        write_text_atomic(Path(out) / "metrics.json", json.dumps(payload, indent=2))
    return result
