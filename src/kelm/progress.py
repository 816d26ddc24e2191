"""Rich progress bars that stay quiet when output is not a terminal or progress is disabled."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def progress_enabled() -> bool:
    """Progress is shown on a terminal unless ``KELM_PROGRESS=0``."""
    flag = os.environ.get("KELM_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no")
    return console.is_terminal


@contextmanager
def progress_bar(transient: bool = True) -> Iterator[Progress]:
    """A Rich progress display with count, rate and ETA columns."""
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=transient, disable=not progress_enabled()) as bar:
        yield bar
