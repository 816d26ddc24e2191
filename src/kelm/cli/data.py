"""`kelm data`: list, inspect and prepare the named data sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kelm.data import DatasetSpec, cache_root, get_spec, list_specs, locate, prepare
from kelm.errors import ConfigError

app = typer.Typer(help="List, inspect and prepare named data sets.", no_args_is_help=True)
out = Console(highlight=False)

NameArg = Annotated[str, typer.Argument(help="Data-set name (see `kelm data list`).", show_default=False)]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder of data sets (default: $KELM_DATA_DIR, then cache, then bundled)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def _check_dir(data_dir: Path | None) -> None:
    if data_dir is not None and not data_dir.is_dir():
        raise ConfigError(f"--data-dir {data_dir} is not a folder")


def _summary(spec: DatasetSpec, data_dir: Path | None) -> dict[str, Any]:
    loc = locate(spec.name, data_dir)
    return {
        "name": spec.name,
        "kind": spec.kind,
        "size": spec.size,
        "license": spec.license,
        "description": spec.description,
        "source": None if loc is None else loc.source,
        "path": None if loc is None else str(loc.path),
    }


@app.command("list")
def list_cmd(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """List the registered data sets and where each resolves now (data-dir, cache or bundled)."""
    _check_dir(data_dir)
    rows = [_summary(spec, data_dir) for spec in list_specs()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="data sets")
    for col in ("name", "kind", "size", "license", "location"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for row in rows:
        where = row["source"] or "[dim]not available[/]"
        short_license = row["license"].split(" (", 1)[0]
        table.add_row(row["name"], row["kind"], _human(row["size"]), short_license, where)
    out.print(table)
    out.print("[dim]`kelm data info NAME` for details, `kelm data prepare NAME` to download[/]")


@app.command("info")
def info(name: NameArg, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Show a data set's provenance, license, format, files with SHA-256 hashes, and where it resolves."""
    _check_dir(data_dir)
    spec = get_spec(name)
    summary = _summary(spec, data_dir)
    if as_json:
        payload = {
            **summary,
            "homepage": spec.homepage,
            "format": spec.format,
            "subdir": spec.subdir,
            "types_subdir": spec.types_subdir,
            "bundled": spec.bundled,
            "reference": spec.reference,
            "files": [
                {
                    "name": f.name,
                    "url": f.url,
                    "member": f.member,
                    "sha256": f.sha256,
                    "size": f.size,
                    "optional": f.optional,
                }
                for f in spec.files
            ],
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    where = "not available" if summary["source"] is None else f"{summary['path']} ({summary['source']})"
    fields = [
        ("name", spec.name),
        ("kind", spec.kind),
        ("description", spec.description),
        ("license", spec.license),
        ("homepage", spec.homepage),
        ("format", spec.format),
        ("folder", spec.subdir + ("" if spec.types_subdir is None else f" (types: {spec.types_subdir})")),
        ("bundled", "yes" if spec.bundled else "no"),
        ("reference", spec.reference or "-"),
        ("size", _human(spec.size)),
        ("location", where),
    ]
    for key, value in fields:
        out.print(f"[bold]{key:>12}[/]  {value}", soft_wrap=True, markup=True)
    out.print("[bold]       files[/]")
    for f in spec.files:
        origin = f.url if f.member is None else f"{f.url} :: {f.member}"
        out.print(
            f"  {f.name}  {_human(f.size)}  sha256 {f.sha256 or 'unknown'}  {origin}",
            soft_wrap=True,
            markup=False,
        )


@app.command("prepare")
def prepare_cmd(
    name: NameArg,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="Cache root (default: $KELM_CACHE_DIR or ~/.cache/kelm); files go to DIR/datasets/NAME.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if files are present.")] = False,
    no_verify: Annotated[
        bool,
        typer.Option("--no-verify", help="Accept files whose SHA-256 is unknown or does not match (warns)."),
    ] = False,
) -> None:
    """Download a data set into the cache, verifying each file's SHA-256 before it is kept."""
    spec = get_spec(name)
    path = prepare(spec.name, cache_dir=cache_dir, force=force, verify=not no_verify)
    extra = f" (entity types: {spec.types_subdir.rsplit('/', 1)[-1]})" if spec.types_subdir else ""
    out.print(f"{spec.name} is ready in {path}{extra}", soft_wrap=True, markup=False)
    if cache_dir is not None and cache_root(cache_dir).resolve() != cache_root().resolve():
        out.print(
            f"set KELM_CACHE_DIR={cache_dir} or pass --data-dir {cache_dir / 'datasets'} so kelm finds it",
            soft_wrap=True,
            markup=False,
        )
