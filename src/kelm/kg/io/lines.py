"""Line-by-line reading of text files as bytes, so bad UTF-8 is reported with its line number."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from kelm.errors import DataError
from kelm.kg.io.report import ReadReport


def require_file(path: str | Path) -> Path:
    """``path`` as a `Path`, or a `DataError` if it is not an existing file."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path)
    if not path.is_file():
        raise DataError("not a file", path)
    return path


def reject(message: str, path: str | Path, line: int | None, *, skip_bad: bool, report: ReadReport) -> None:
    """Raise a `DataError` for bad input, or count it as skipped when ``skip_bad`` is set."""
    if not skip_bad:
        raise DataError(message, path, line)
    report.skip(path)


def iter_lines(
    path: str | Path, *, skip_bad: bool = False, report: ReadReport | None = None
) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` with the line ending (``\\n``, ``\\r\\n``) removed.

    Lines that are not valid UTF-8 raise a `DataError` naming the line, or are skipped and
    counted when ``skip_bad`` is set. A UTF-8 byte-order mark on the first line is dropped.
    """
    path = require_file(path)
    report = report if report is not None else ReadReport()
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                reject(
                    f"invalid UTF-8 (byte {exc.start + 1} of the line)",
                    path,
                    number,
                    skip_bad=skip_bad,
                    report=report,
                )
                continue
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield number, text.rstrip("\n").rstrip("\r")
