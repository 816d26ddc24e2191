"""TOML configs validated by pydantic: unknown keys are rejected by name, flags override values."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kelm.errors import ConfigError

C = TypeVar("C", bound="Section")


class Section(BaseModel):
    """Base of every config section: strict keys, validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line naming the first offending field, e.g. ``cfg.toml: store.backend: ...``."""
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    extra = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {field}: {msg}{extra}"


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file, turning syntax errors into a `ConfigError` with the line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: invalid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: config file is not valid UTF-8") from None


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted='a.b'``, creating tables as needed."""
    keys = dotted.split(".")
    cur = data
    for key in keys[:-1]:
        cur = cur.setdefault(key, {})
    cur[keys[-1]] = value


def load_config(
    model: type[C],
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> C:
    """Build ``model`` from an optional TOML file, then apply dotted-key overrides (None is skipped)."""
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path) if path else "config")) from None


# --- sections ------------------------------------------------------------------------------
class StoreConfig(Section):
    """``[store]``: where the knowledge graph lives."""

    backend: Literal["ladybug", "falkordb", "neo4j"] = "ladybug"
    path: str | None = None
    uri: str | None = None
    user: str | None = None
    password: str | None = None


class DataConfig(Section):
    """``[data]``: where named data sets are found and how strictly files are read."""

    data_dir: str | None = None
    skip_bad: bool = False
    chunk_size: int = Field(50_000, gt=0)
