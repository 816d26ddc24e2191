"""Where a named data set lives on this machine. Resolution never downloads.

Order: an explicit ``data_dir`` (or, when none is given, ``$KELM_DATA_DIR``), holding the set at
``<dir>/<subdir>`` or ``<dir>/<name>``; then the cache ``<cache root>/datasets/<name>``; then, for
bundled sets, the copy inside the package. A folder counts only when it holds every required file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kelm.data.registry import DatasetSpec, get_spec, spec_for_subdir
from kelm.errors import DatasetError

ENV_DATA_DIR = "KELM_DATA_DIR"
ENV_CACHE_DIR = "KELM_CACHE_DIR"
BUNDLED_ROOT = Path(__file__).resolve().parent / "bundled"

Source = Literal["data-dir", "cache", "bundled"]


@dataclass(frozen=True)
class Location:
    """A resolved data-set folder and which rule found it."""

    path: Path
    source: Source


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """kelm's cache root: ``cache_dir``, else ``$KELM_CACHE_DIR``, else ``$XDG_CACHE_HOME/kelm``
    or ``~/.cache/kelm``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kelm"


def dataset_cache_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """The cache folder of data set ``name``: ``<cache root>/datasets/<name>``."""
    return cache_root(cache_dir) / "datasets" / get_spec(name).name


def bundled_path(name: str) -> Path:
    """The copy of a bundled data set shipped inside the package."""
    spec = get_spec(name)
    if not spec.bundled:
        raise DatasetError(f"data set '{spec.name}' is not bundled; run `kelm data prepare {spec.name}`")
    return BUNDLED_ROOT / spec.name


def missing_files(spec: DatasetSpec, folder: Path) -> list[str]:
    """Required files of ``spec`` absent from ``folder``."""
    return [f.name for f in spec.required if not (folder / f.name).is_file()]


def _data_root(data_dir: str | Path | None) -> Path | None:
    if data_dir is not None and str(data_dir):
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA_DIR)
    return Path(env).expanduser() if env else None


def candidates(
    spec: DatasetSpec, data_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> list[Location]:
    """Every folder resolution considers for ``spec``, in order."""
    found: list[Location] = []
    root = _data_root(data_dir)
    if root is not None:
        found.append(Location(root / spec.subdir, "data-dir"))
        if spec.subdir != spec.name:
            found.append(Location(root / spec.name, "data-dir"))
    found.append(Location(dataset_cache_dir(spec.name, cache_dir), "cache"))
    if spec.bundled:
        found.append(Location(BUNDLED_ROOT / spec.name, "bundled"))
    return found


def locate(name: str, data_dir: str | Path | None = None, *, cache_dir: str | Path | None = None) -> Location | None:
    """The first complete folder for ``name``, or ``None``."""
    spec = get_spec(name)
    for loc in candidates(spec, data_dir, cache_dir):
        if loc.path.is_dir() and not missing_files(spec, loc.path):
            return loc
    return None


def resolve(name: str, data_dir: str | Path | None = None, *, cache_dir: str | Path | None = None) -> Path:
    """The folder holding data set ``name``; raises `DatasetError` saying where it looked."""
    spec = get_spec(name)
    loc = locate(spec.name, data_dir, cache_dir=cache_dir)
    if loc is not None:
        return loc.path
    looked = []
    for cand in candidates(spec, data_dir, cache_dir):
        missing = missing_files(spec, cand.path) if cand.path.is_dir() else []
        looked.append(f"{cand.path} (missing {', '.join(missing)})" if missing else str(cand.path))
    raise DatasetError(
        f"data set '{spec.name}' not found; looked in {'; '.join(looked)}. "
        f"Run `kelm data prepare {spec.name}` to download it, or pass --data-dir / set {ENV_DATA_DIR}"
    )


def resolve_types(name: str, data_dir: str | Path | None = None, *, cache_dir: str | Path | None = None) -> Path | None:
    """The entity-type folder of ``name`` (CoDEx), or ``None`` when it has none or it is not present."""
    spec = get_spec(name)
    if spec.types_subdir is None:
        return None
    types = spec_for_subdir(spec.types_subdir)
    if types is None:  # pragma: no cover - registry invariant
        return None
    loc = locate(types.name, data_dir, cache_dir=cache_dir)
    return None if loc is None else loc.path
