"""The one registry idiom: a name maps to ``"module:attribute"``, imported on first use.

Tasks, KGE models, training strategies, graph-store backends and model kinds are all registered
this way, so listing the names never imports a heavy module and a plug-in adds an entry with
`Registry.register` instead of editing a loader.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from kelm.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one kind of thing (``what``) → ``"module:attr"`` targets, resolved lazily."""

    def __init__(self, what: str, entries: Mapping[str, str], error: type[Exception] = ConfigError):
        self.what = what
        self._targets: dict[str, str] = {}
        self._loaded: dict[str, T] = {}
        self._error = error
        for name, target in entries.items():
            self.register(name, target)

    def register(self, name: str, target: str) -> None:
        """Add (or replace) ``name``; ``target`` is ``"package.module:attribute"``."""
        module, sep, attr = target.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"registry target must be 'module:attr', not {target!r}")
        self._targets[name] = target
        self._loaded.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._targets)

    def target(self, name: str) -> str:
        """The ``"module:attr"`` string of ``name``, without importing it."""
        self.check(name)
        return self._targets[name]

    def check(self, name: str, field: str | None = None) -> None:
        """Raise one clear error (naming ``field`` when given) if ``name`` is not registered."""
        if name not in self._targets:
            where = f"{field}: " if field else ""
            raise self._error(f"{where}unknown {self.what} '{name}' (known: {', '.join(self.names())})")

    def get(self, name: str, field: str | None = None) -> T:
        """The registered object, importing its module the first time."""
        if name not in self._loaded:
            self.check(name, field)
            module, _, attr = self._targets[name].partition(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._loaded[name] = obj
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._targets)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {self._targets!r})"


__all__ = ["Registry"]
