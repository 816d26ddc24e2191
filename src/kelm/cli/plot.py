"""`kelm plot`: training curves of a run folder as an image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

out = Console(highlight=False, soft_wrap=True)


def plot(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by 'kelm train'.")],
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="Image to write (default: RUN_DIR/curves.png).")
    ] = None,
) -> None:
    """Plot train loss and validation metrics against step (one panel per metric)."""
    from kelm.train.plot import plot_run

    path = plot_run(run_dir, out_file)
    out.print(f"wrote {path}")
