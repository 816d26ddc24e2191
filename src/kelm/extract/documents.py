"""Documents to extract from: a ``.txt`` file, a folder of them, or JSONL with ``id`` and ``text``.

A text file's id is its path relative to the folder given (its name for a single file); a JSONL
line's id is its ``id`` field. Bad documents (not UTF-8, empty, too large, a JSONL line that is
not an object with string ``id`` and ``text``, a repeated id) are one `DataError` naming the file
and line, or, with ``skip_bad``, skipped and counted in `DocumentReport`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kelm.errors import DataError

#: Largest document accepted, in characters (a book is about 500,000).
MAX_CHARS = 2_000_000


@dataclass(frozen=True, slots=True)
class Document:
    """One document: its id, its text and where it came from (file, and line for JSONL)."""

    id: str
    text: str
    path: Path
    line: int | None = None


@dataclass
class DocumentReport:
    """How many documents were read, and the skipped ones with their reasons."""

    read: int = 0
    skipped: list[str] = field(default_factory=list)


def read_documents(
    source: str | Path, skip_bad: bool = False, max_chars: int = MAX_CHARS, report: DocumentReport | None = None
) -> Iterator[Document]:
    """The documents of ``source`` in a stable order (files sorted by path)."""
    path = Path(source)
    report = report if report is not None else DocumentReport()
    seen: set[str] = set()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".jsonl"))
        if not files:
            raise DataError("no .txt or .jsonl files", path)
        base = path
    elif path.is_file():
        files, base = [path], path.parent
    else:
        raise DataError("no such file or folder", path)
    for f in files:
        docs = _jsonl(f) if f.suffix == ".jsonl" else _text(f, f.relative_to(base).as_posix())
        for doc_or_error in docs:
            if isinstance(doc_or_error, DataError):
                _fail(doc_or_error, skip_bad, report)
                continue
            doc = doc_or_error
            problem = _problem(doc, seen, max_chars)
            if problem:
                _fail(DataError(problem, doc.path, doc.line), skip_bad, report)
                continue
            seen.add(doc.id)
            report.read += 1
            yield doc


def _problem(doc: Document, seen: set[str], max_chars: int) -> str | None:
    if not doc.text.strip():
        return f"document '{doc.id}' is empty"
    if len(doc.text) > max_chars:
        return f"document '{doc.id}' has {len(doc.text):,} characters, over the limit of {max_chars:,}"
    if doc.id in seen:
        return f"document id '{doc.id}' occurs twice"
    return None


def _fail(err: DataError, skip_bad: bool, report: DocumentReport) -> None:
    if not skip_bad:
        raise err
    report.skipped.append(str(err))


def _decode(data: bytes, path: Path) -> str | DataError:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        return DataError("not UTF-8 text", path, data[: err.start].count(b"\n") + 1)


def _text(path: Path, doc_id: str) -> Iterator[Document | DataError]:
    text = _decode(path.read_bytes(), path)
    yield text if isinstance(text, DataError) else Document(doc_id, text, path)


def _jsonl(path: Path) -> Iterator[Document | DataError]:
    for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        line = _decode(raw, path)
        if isinstance(line, DataError):
            yield DataError("not UTF-8 text", path, n)
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            yield DataError(f"invalid JSON ({err.msg})", path, n)
            continue
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("id"), str | int)
            or not isinstance(item.get("text"), str)
        ):
            yield DataError("expected an object with an 'id' and a string 'text'", path, n)
            continue
        yield Document(str(item["id"]), item["text"], path, n)


__all__ = ["MAX_CHARS", "Document", "DocumentReport", "read_documents"]
