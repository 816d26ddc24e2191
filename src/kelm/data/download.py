"""Download named data sets into the cache, checking every file against its recorded SHA-256.

Each file is written to a temp file beside its final name, hashed, and only then renamed into
place, so an interrupted or corrupted download never appears under the final name.
Set ``$KELM_DATASET_MIRROR`` to fetch plain files from ``<mirror>/<name>/<file name>`` instead.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Protocol

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from kelm.data.registry import DatasetSpec, FileSpec, get_spec, spec_for_subdir
from kelm.data.resolve import dataset_cache_dir
from kelm.errors import DatasetError
from kelm.progress import console, progress_enabled

ENV_MIRROR = "KELM_DATASET_MIRROR"
CHUNK = 1 << 16
TIMEOUT_S = 60
_SCHEMES = ("http://", "https://", "file:")


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def source_of(spec: DatasetSpec, f: FileSpec) -> tuple[str, str | None]:
    """``(url, archive member or None)`` for ``f``, honouring ``$KELM_DATASET_MIRROR``."""
    mirror = os.environ.get(ENV_MIRROR, "").strip()
    if mirror:
        return f"{mirror.rstrip('/')}/{spec.name}/{f.name}", None
    return f.url, f.member


def prepare(
    name: str,
    *,
    cache_dir: str | Path | None = None,
    force: bool = False,
    verify: bool = True,
    progress: bool = True,
) -> Path:
    """Download data set ``name`` (and its entity types, if any) into the cache; return its folder.

    Files already present with the right hash are kept unless ``force``. With ``verify`` (the
    default) a file without a recorded hash is refused and a hash mismatch raises `DatasetError`;
    with ``verify=False`` both only print a warning.
    """
    spec = get_spec(name)
    specs = [spec]
    if spec.types_subdir is not None:
        types = spec_for_subdir(spec.types_subdir)
        if types is not None:
            specs.append(types)
    if verify:
        for s in specs:
            _check_verifiable(s)
    with _progress(progress) as bar:
        folders = [_prepare_one(s, cache_dir, force, verify, bar) for s in specs]
    return folders[0]


def _check_verifiable(spec: DatasetSpec) -> None:
    unknown = [f.name for f in spec.files if f.sha256 is None]
    if unknown:
        raise DatasetError(
            f"{spec.name}: no recorded sha256 for {', '.join(unknown)}, so the download cannot be "
            "verified; pass --no-verify (verify=False) to accept unverified files"
        )


def _is_current(path: Path, f: FileSpec) -> bool:
    return path.is_file() and (f.sha256 is None or sha256_file(path) == f.sha256)


def _prepare_one(spec: DatasetSpec, cache_dir: str | Path | None, force: bool, verify: bool, bar: Progress) -> Path:
    target = dataset_cache_dir(spec.name, cache_dir)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(f"cannot create cache folder {target}: {err.strerror or err}") from err
    todo = [f for f in spec.files if force or not _is_current(target / f.name, f)]
    by_url: dict[str, list[tuple[FileSpec, str | None]]] = {}
    for f in todo:
        url, member = source_of(spec, f)
        by_url.setdefault(url, []).append((f, member))
    for url, items in by_url.items():
        if all(member is None for _, member in items):
            for f, _ in items:
                with _temp_file(target, f.name) as tmp:
                    digest = _download(url, tmp, bar, f"{spec.name}/{f.name}", f.size)
                    _finish(spec, f, tmp, digest, url, target, verify)
        else:
            with _temp_file(target, Path(url).name) as archive:
                _download(url, archive, bar, f"{spec.name}/{Path(url).name}", None)
                for f, member in items:
                    with _temp_file(target, f.name) as tmp:
                        digest = _extract(archive, member or f.name, tmp, url)
                        _finish(spec, f, tmp, digest, url, target, verify)
    return target


def _finish(spec: DatasetSpec, f: FileSpec, tmp: Path, digest: str, url: str, target: Path, verify: bool) -> None:
    """Check ``tmp``'s hash, then move it to its final name (or raise, leaving nothing behind)."""
    label = f"{spec.name}/{f.name}"
    if f.sha256 is None:
        console.print(f"[yellow]warning:[/] {label} is unverified (no recorded sha256)", highlight=False)
    elif digest != f.sha256:
        message = f"{label}: sha256 mismatch, expected {f.sha256}, got {digest} (from {url})"
        if verify:
            raise DatasetError(message + "; the download was discarded")
        console.print(f"[yellow]warning:[/] {message}; kept because of --no-verify", highlight=False)
    os.replace(tmp, target / f.name)


@contextmanager
def _temp_file(folder: Path, name: str) -> Iterator[Path]:
    """A temp path beside ``folder/name``; removed afterwards unless it was renamed away."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _download(url: str, dest: Path, bar: Progress, label: str, size: int | None) -> str:
    """Stream ``url`` into ``dest``; return the hex SHA-256 of the bytes."""
    if not url.startswith(_SCHEMES):
        raise DatasetError(f"cannot download {url}: only http, https and file URLs are supported")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp, open(dest, "wb") as out:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else size
            task = bar.add_task(label, total=total)
            _copy(resp, out, digest, bar, task)
    except urllib.error.HTTPError as err:
        raise DatasetError(f"cannot download {url}: HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        raise DatasetError(f"cannot download {url}: {err.reason}; check the network or the URL") from err
    except (OSError, ValueError, http.client.HTTPException) as err:
        raise DatasetError(f"cannot download {url}: {err!r}") from err
    return digest.hexdigest()


def _copy(
    src: IO[bytes], out: IO[bytes], digest: _Hasher, bar: Progress | None = None, task: TaskID | None = None
) -> None:
    for block in iter(lambda: src.read(CHUNK), b""):
        out.write(block)
        digest.update(block)
        if bar is not None and task is not None:
            bar.advance(task, len(block))


def _extract(archive: Path, member: str, dest: Path, url: str) -> str:
    """Copy one member of a ``.tar.gz`` into ``dest``; return its hex SHA-256."""
    digest = hashlib.sha256()
    try:
        with tarfile.open(archive, "r:*") as tar:
            src = tar.extractfile(member)
            if src is None:
                raise DatasetError(f"{url}: '{member}' is not a regular file in the archive")
            with src, open(dest, "wb") as out:
                _copy(src, out, digest)
    except KeyError as err:
        raise DatasetError(f"{url}: the archive has no member '{member}'") from err
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DatasetError(f"{url}: cannot read the archive: {err}") from err
    return digest.hexdigest()


@contextmanager
def _progress(show: bool) -> Iterator[Progress]:
    """A byte-counting Rich progress display on kelm's console; silent when disabled."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    enabled = show and progress_enabled()
    with Progress(*columns, console=console, transient=True, disable=not enabled) as bar:
        yield bar
