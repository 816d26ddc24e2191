"""User-facing errors. The CLI prints any `KelmError` as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class KelmError(Exception):
    """Base class for errors a user can cause and fix."""

    exit_code: int = 1


class ConfigError(KelmError):
    """A config file or flag is invalid; the message names the field."""

    exit_code = 2


class DataError(KelmError):
    """Bad input data. Names the file and, where known, the line."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = message
        where = ""
        if self.path is not None:
            where = self.path if line is None else f"{self.path}:{line}"
            where += ": "
        super().__init__(where + message)


class DatasetError(KelmError):
    """A named data set is unknown, missing or fails its checksum."""


class StoreError(KelmError):
    """The graph store cannot be opened, queried or written."""


class ReadOnlyQueryError(StoreError):
    """A write was attempted through the read-only query passthrough."""


class MissingDependencyError(KelmError):
    """A feature needs a package that is not installed; the message says how to install it."""
