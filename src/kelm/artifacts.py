"""The model-folder format every kelm run exports, and the one reader of it.

A model folder holds ``model.safetensors`` (weights, tied tensors once), ``config.toml`` (the
run's config plus a ``[model]`` table whose ``kind`` says what rebuilds it) and whatever the kind
needs besides (vocabularies, tokenizer files). A run folder keeps its model folder in ``model/``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from kelm.atomic import write_text_atomic
from kelm.errors import DataError

WEIGHTS = "model.safetensors"
CONFIG = "config.toml"
MODEL_DIR = "model"

#: How error messages name each model kind.
KIND_NAMES = {
    "gpt": "GPT",
    "hf": "Hugging Face",
    "kge": "link-prediction",
    "text-kgc": "text-kgc",
    "frozen-text-kgc": "frozen-text-kgc",
    "hybrid": "hybrid",
    "kgqa": "question-answering",
    "kg-fusion": "KG-fusion",
    "moe-hf": "upcycled Hugging Face",
    "extractor": "extraction",
}


def model_folder(path: str | Path) -> Path:
    """A run folder's ``model/`` folder, or ``path`` itself if it is a model folder."""
    p = Path(path)
    folder = p / MODEL_DIR if (p / MODEL_DIR).is_dir() else p
    if not (folder / CONFIG).is_file():
        raise DataError(f"not a kelm model folder (no {CONFIG})", folder)
    return folder


def read_model_table(folder: str | Path) -> dict[str, Any]:
    """The ``[model]`` table of ``folder/config.toml`` (a copy), whatever its kind."""
    path = Path(folder) / CONFIG
    try:
        with path.open("rb") as fh:
            return dict(tomllib.load(fh).get("model", {}))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise DataError(f"cannot read the exported model config ({err})", path) from None


def read_model_spec(path: str | Path, kind: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The model folder of ``path`` (a run or model folder) and its ``[model]`` table, checked to be
    of ``kind`` when one is given: a folder of another kind is one clear error naming the file."""
    folder = model_folder(path)
    spec = read_model_table(folder)
    if kind is not None and spec.get("kind") != kind:
        found = spec.get("kind")
        raise DataError(f"not a {KIND_NAMES.get(kind, kind)} model (kind {found!r})", folder / CONFIG)
    return folder, spec


def write_toml(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as TOML, atomically (None values are left out, tuples become arrays)."""
    write_text_atomic(path, tomli_w.dumps(_toml_safe(data)))


def _toml_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_toml_safe(v) for v in value]
    return value


__all__ = [
    "CONFIG",
    "KIND_NAMES",
    "MODEL_DIR",
    "WEIGHTS",
    "model_folder",
    "read_model_spec",
    "read_model_table",
    "write_toml",
]
