"""Packages a feature imports only when used: when one is missing, one line says which feature
needs it and how to install it (`MissingDependencyError`), never a traceback or a silent skip."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from kelm.errors import MissingDependencyError


def _error(module: str, feature: str, package: str | None, hint: str | None) -> MissingDependencyError:
    name = package or module.split(".")[0]
    extra = f" ({hint})" if hint else ""
    return MissingDependencyError(f"{feature} needs {name}: pip install {name}{extra}")


def require(module: str, feature: str, package: str | None = None, hint: str | None = None) -> ModuleType:
    """Import ``module`` for ``feature`` (``kelm plot``); ``package`` is its pip name when that differs."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise _error(module, feature, package, hint) from None


def check_installed(module: str, feature: str, package: str | None = None, hint: str | None = None) -> None:
    """Like `require`, without importing ``module`` (for a check before work starts)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise _error(module, feature, package, hint)
