"""CoDEx-style JSON: ``{"id": {"label": ..., "description": ...}}`` text files and the types
folder with ``entity2types.json`` (``{"entity": ["type", ...]}``) and ``types.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kelm.errors import DataError
from kelm.kg.io.lines import reject, require_file
from kelm.kg.io.report import ReadReport

ENTITY_TYPES = "entity2types.json"
TYPE_TEXT = "types.json"

TextPair = tuple[str | None, str | None]


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; bad UTF-8 or syntax errors name the line."""
    path = require_file(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError("invalid UTF-8", path, data[: exc.start].count(b"\n") + 1) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg}", path, exc.lineno) from None


def _read_object(path: str | Path) -> dict[str, Any]:
    value = read_json(path)
    if not isinstance(value, dict):
        raise DataError("expected a JSON object keyed by id", path, 1)
    return value


def _text(value: Any) -> str | None:
    """A non-empty string, or None for null or empty; `TypeError` for anything else."""
    if value is None or isinstance(value, str):
        return value or None
    raise TypeError(type(value).__name__)


def _text_pair(value: Any) -> TextPair:
    """``(label, description)`` of one entry: an object, or a bare string taken as the label."""
    if isinstance(value, str):
        return _text(value), None
    if isinstance(value, dict):
        return _text(value.get("label")), _text(value.get("description"))
    raise TypeError(type(value).__name__)


def read_json_text(
    path: str | Path, *, skip_bad: bool = False, report: ReadReport | None = None
) -> dict[str, TextPair]:
    """``id -> (label, description)`` from ``{"id": {"label": ..., "description": ...}}``.

    A bare string value is taken as the label. Other entry shapes are errors (or skipped and
    counted with ``skip_bad``).
    """
    report = report if report is not None else ReadReport()
    texts: dict[str, TextPair] = {}
    for key, value in _read_object(path).items():
        try:
            texts[key] = _text_pair(value)
        except TypeError:
            problem = f"entry {key!r}: expected an object with string 'label' and 'description'"
            reject(problem, path, None, skip_bad=skip_bad, report=report)
    return texts


def _types_file(path: str | Path, name: str) -> Path:
    path = Path(path)
    return path / name if path.is_dir() else path


def read_entity_types(
    path: str | Path, *, skip_bad: bool = False, report: ReadReport | None = None
) -> dict[str, tuple[str, ...]]:
    """``entity -> type ids`` from ``entity2types.json`` (``path`` is the file or its folder)."""
    path = _types_file(path, ENTITY_TYPES)
    report = report if report is not None else ReadReport()
    types: dict[str, tuple[str, ...]] = {}
    for key, value in _read_object(path).items():
        if isinstance(value, list) and all(isinstance(t, str) and t for t in value):
            types[key] = tuple(dict.fromkeys(value))
        else:
            problem = f"entry {key!r}: expected a list of type ids"
            reject(problem, path, None, skip_bad=skip_bad, report=report)
    return types


def read_type_labels(path: str | Path, *, skip_bad: bool = False, report: ReadReport | None = None) -> dict[str, str]:
    """``type id -> label`` from ``types.json`` (``path`` is the file or its folder)."""
    path = _types_file(path, TYPE_TEXT)
    texts = read_json_text(path, skip_bad=skip_bad, report=report)
    return {tid: label for tid, (label, _) in texts.items() if label}
