"""`kelm demo`: the main job, offline, on the embedded store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from kelm.cli.kg import stats_table
from kelm.errors import ConfigError

if TYPE_CHECKING:
    from kelm.app.demo import DemoResult, QueryResult

out = Console(highlight=False)
DEFAULT_OUT = Path("kelm-demo")
SPLIT_NOTES = {"test": "held-out test fact", "valid": "held-out valid fact", "removed": "fact held out of training"}


def results_table(res: DemoResult) -> Table:
    """Model × setting: filtered test MRR, Hits@1, Hits@10 and training seconds."""
    table = Table(
        title="UMLS, filtered ranking of the test split",
        caption=f"inductive: {res.unseen} of {res.stats.entities} entities unseen in training",
    )
    for col in ("setting", "model", "MRR", "Hits@1", "Hits@10", "train s"):
        table.add_column(col, justify="left" if col in ("setting", "model") else "right")
    for r in res.rows:
        name = f"{r.model} (α={res.alpha[r.setting]:.1f})" if r.model == "hybrid" else r.model
        table.add_row(r.setting, name, f"{r.mrr:.3f}", f"{r.hits_at_1:.3f}", f"{r.hits_at_10:.3f}", f"{r.seconds:.1f}")
    return table


def print_query(q: QueryResult) -> None:
    """A query, its top answers, and for each the store's other facts that connect it to the head."""
    from kelm.app.demo import EVIDENCE_HOPS

    note = " [yellow](head unseen in inductive training)[/]" if q.unseen else ""
    out.print(f"[bold]{q.text}[/] hybrid, {q.setting}{note}; training facts left out")
    for i, a in enumerate(q.answers, 1):
        mark = f"[green]✓ {SPLIT_NOTES.get(a.split, a.split)}[/]" if a.split else "[cyan]not a fact of the store[/]"
        out.print(f"  {i}. {a.label}  score {a.score:.2f}  {mark}")
        if not a.paths:
            out.print(f"     evidence: no other path within {EVIDENCE_HOPS} hops")
        for path in a.paths:
            out.print("     evidence: " + " · ".join(f"({h}, {r}, {t})" for h, r, t in path))


def demo(
    store: Annotated[
        Path | None,
        typer.Option("--store", "-s", help="LadybugDB folder (its content is replaced; default: OUT/store)."),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Models, metrics.json and the feature cache go here.")
    ] = DEFAULT_OUT,
    quick: Annotated[
        bool, typer.Option("--quick", help="Train for a fraction of the budget (about a minute; for tests).")
    ] = False,
    threads: Annotated[int | None, typer.Option("--threads", help="torch threads (default: all cores).")] = None,
) -> None:
    """Train structure-only, text and hybrid KG completion on bundled UMLS (standard and inductive
    splits), print their filtered MRR and Hits@10, save them, and answer sample queries with evidence."""
    from kelm.app.demo import DEMO_DATASET, run_demo

    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; the demo writes a folder there")
    target = store if store is not None else out_dir / "store"
    with out.status("kelm demo") as status:
        res = run_demo(target, out_dir, quick=quick, threads=threads, progress=lambda m: status.update(m))
    out.print(f"[bold]kelm demo[/]: {DEMO_DATASET} imported into LadybugDB at {target} ({res.report.seconds:.2f} s)")
    out.print(stats_table(res.stats, "store statistics"))
    out.print(results_table(res))
    for q in res.queries:
        print_query(q)
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in res.stages.items())
    out.print(f"[dim]stages: {stages}[/]")
    out.print(f"total {res.seconds:.1f} s; models and metrics.json in {res.out}")
