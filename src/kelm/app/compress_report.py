"""``kelm compress report``: the ``compression.json`` of several compressed runs as one table and
one size / accuracy / latency figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kelm.atomic import atomic_path
from kelm.errors import DataError

COMPRESSION_FILE = "compression.json"
DEFAULT_PLOT = "compression.png"


def read_compression(run: str | Path) -> dict[str, Any]:
    """The ``compression.json`` of a ``kelm compress`` output folder."""
    path = Path(run) / COMPRESSION_FILE
    if not path.is_file():
        raise DataError(f"no {COMPRESSION_FILE}; not a `kelm compress` output folder", Path(run))
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read ({err})", path) from None
    for key in ("method", "original", "compressed"):
        if key not in record:
            raise DataError(f"no '{key}' field", path)
    return record


def _row(name: str, method: str, m: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    lat = m["latency"]
    row = {
        "run": name,
        "method": method,
        "size_mb": m["size_bytes"] / 2**20,
        "parameters": m["parameters"],
        "p50_ms_batch_1": lat["batch_1"]["p50_ms"],
        "p99_ms_batch_1": lat["batch_1"]["p99_ms"],
        "p50_ms_batch_32": lat["batch_32"]["p50_ms"],
        "p99_ms_batch_32": lat["batch_32"]["p99_ms"],
        "items_per_second": lat["batch_32"]["items_per_second"],
        "metric": m["metric"]["name"],
        "value": m["metric"]["value"],
    }
    if base is not None and base["metric"]["value"]:
        row["retained"] = m["metric"]["value"] / base["metric"]["value"]
        row["speedup"] = lat["batch_32"]["items_per_second"] / base["latency"]["batch_32"]["items_per_second"]
        row["size_ratio"] = m["size_bytes"] / base["size_bytes"]
    return row


def report_rows(runs: list[str | Path]) -> list[dict[str, Any]]:
    """One row per distinct original (its ``source``) and one per compressed run, in order."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for run in runs:
        record = read_compression(run)
        source = str(record.get("source", "original"))
        if source not in seen:
            seen.add(source)
            rows.append(_row(source, "original", record["original"], None))
        rows.append(_row(str(run), record["method"], record["compressed"], record["original"]))
    return rows


def plot_report(rows: list[dict[str, Any]], out: str | Path) -> Path:
    """Metric against size and against batch-32 latency, one point per row; PNG at ``out``."""
    from kelm.optional import require

    require("matplotlib", "kelm compress report")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, label in (
        (axes[0], "size_mb", "size on disk (MB)"),
        (axes[1], "p50_ms_batch_32", "p50 latency, batch 32 (ms)"),
    ):
        for row in rows:
            marker = "*" if row["method"] == "original" else "o"
            ax.scatter(row[key], row["value"], marker=marker, s=120 if marker == "*" else 50)
            ax.annotate(f"{row['method']} ({Path(row['run']).name})", (row[key], row["value"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")  # fmt: skip
        ax.set_xlabel(label)
        ax.set_ylabel(rows[0]["metric"] if rows else "metric")
        ax.grid(alpha=0.3)
    fig.suptitle("compression: metric against size and latency")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        FigureCanvasAgg(fig).print_figure(str(tmp), format=out.suffix.lstrip(".") or "png", dpi=120)
    return out


__all__ = ["COMPRESSION_FILE", "DEFAULT_PLOT", "plot_report", "read_compression", "report_rows"]
