"""`kelm demo`: the main job, offline, on the embedded store."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kelm.cli.kg import render_subgraph, stats_table

out = Console()


def demo(
    store: Annotated[
        Path | None,
        typer.Option("--store", "-s", help="Keep the demo store in this folder (default: temporary)."),
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Write metrics.json here.")] = None,
) -> None:
    """Run the offline demo: import bundled UMLS into LadybugDB, show statistics and a 2-hop subgraph."""
    from kelm.demo import DEMO_DATASET, run_demo

    with tempfile.TemporaryDirectory(prefix="kelm-demo-") as tmp:
        target = store if store is not None else Path(tmp) / "store"
        with out.status("importing the demo graph into LadybugDB"):
            res = run_demo(target, out=out_dir)
        out.print(
            f"[bold]kelm demo[/]: {DEMO_DATASET} imported into LadybugDB at {target} ({res.report.seconds:.2f} s)",
            highlight=False,
        )
        out.print(stats_table(res.stats, "store statistics"))
        out.print("[bold]a sampled 2-hop subgraph[/] (3 neighbours per entity and hop)")
        out.print(render_subgraph(res.subgraph))
        if store is None:
            out.print("[dim]the store was temporary; pass --store DIR to keep it[/]")
