"""Rich progress bars that stay quiet when output is not a terminal or progress is disabled, and
plain log lines for runs whose stdout is a file or a pipe (nohup, SLURM, CI)."""

from __future__ import annotations

import logging
import os
import sys
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


def plain_log_lines() -> bool:
    """Training prints plain log lines when stdout is not a terminal or the bar is turned off."""
    return not sys.stdout.isatty() or not progress_enabled()


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is when a record arrives (tests swap it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stdout

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def install_log_lines(name: str = "kelm.train") -> None:
    """Print the ``name`` logger's INFO lines on stdout when `plain_log_lines` holds (once per process)."""
    logger = logging.getLogger(name)
    if not plain_log_lines() or any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        return
    logger.addHandler(_StdoutHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


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
