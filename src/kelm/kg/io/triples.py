"""Streaming readers for delimited triple files: TSV (tab) and CSV (comma, with quoting)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from kelm.kg.io.formats import default_delimiter
from kelm.kg.io.lines import iter_lines, reject
from kelm.kg.io.report import ReadReport
from kelm.kg.model import Triple

COLUMNS = ("head", "relation", "tail")


def split_fields(text: str, delimiter: str) -> list[str]:
    """Split one line into stripped fields; CSV quoting is honoured for commas."""
    if delimiter == "," and ('"' in text):
        try:
            rows = list(csv.reader([text], delimiter=",", strict=True))
        except csv.Error as exc:
            raise ValueError(f"bad CSV quoting: {exc}") from None
        fields = rows[0] if rows else []
    else:
        fields = text.split(delimiter)
    return [f.strip() for f in fields]


def parse_triple(text: str, delimiter: str) -> Triple:
    """One triple from a line, or `ValueError` saying what is wrong with it."""
    fields = split_fields(text, delimiter)
    if len(fields) != 3:
        raise ValueError(f"expected 3 columns, found {len(fields)}")
    for name, value in zip(COLUMNS, fields, strict=True):
        if not value:
            raise ValueError(f"empty {name} field")
    return Triple(*fields)


def iter_numbered_triples(
    path: str | Path,
    *,
    delimiter: str | None = None,
    skip_bad: bool = False,
    report: ReadReport | None = None,
) -> Iterator[tuple[int, Triple]]:
    """Yield ``(line_number, triple)``; blank lines are ignored, malformed ones rejected."""
    report = report if report is not None else ReadReport()
    delimiter = delimiter or default_delimiter(path)
    for number, text in iter_lines(path, skip_bad=skip_bad, report=report):
        if not text.strip():
            continue
        try:
            triple = parse_triple(text, delimiter)
        except ValueError as exc:
            reject(str(exc), path, number, skip_bad=skip_bad, report=report)
            continue
        yield number, triple


def iter_delimited(
    path: str | Path,
    *,
    delimiter: str | None = None,
    skip_bad: bool = False,
    report: ReadReport | None = None,
) -> Iterator[Triple]:
    """Stream the triples of a TSV/CSV file (delimiter from the extension unless given)."""
    for _, triple in iter_numbered_triples(path, delimiter=delimiter, skip_bad=skip_bad, report=report):
        yield triple
