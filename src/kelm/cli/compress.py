"""`kelm compress`: distil, quantize, prune or share the weights of a fine-tuned run; `kelm compress
report` compares compressed runs with their originals."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kelm.errors import ConfigError

out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 150)


def _layers(value: str) -> int | list[int]:
    try:
        parts = [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"--layers: expected a count or comma-separated layer indices, not '{value}'") from None
    if not parts:
        raise ConfigError("--layers: empty")
    return parts[0] if len(parts) == 1 and "," not in value else parts


def compress(
    targets: Annotated[
        list[str], typer.Argument(help="RUN to compress, or 'report' followed by compressed run folders.")
    ],
    method: Annotated[str | None, typer.Option("--method", "-m", help="distill, int8, prune or share.")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="New run folder for the compressed model.")
    ] = None,
    layers: Annotated[
        str, typer.Option(help="distill/share: student depth, or teacher layers to keep (e.g. 1,3,5).")
    ] = "3",
    student: Annotated[
        str, typer.Option(help="distill: 'layers', or a model with its own tokenizer (tiny-bert, a folder).")
    ] = "layers",
    groups: Annotated[int, typer.Option(help="share: distinct weight sets among the layers.")] = 1,
    dim: Annotated[int, typer.Option(help="distill of a KGE run: the student's embedding size.")] = 128,
    temperature: Annotated[float, typer.Option(help="distill/share: softmax temperature.")] = 2.0,
    alpha: Annotated[float, typer.Option(help="distill/share: weight of the teacher's soft labels.")] = 0.5,
    hidden_weight: Annotated[float, typer.Option(help="distill/share: weight of the hidden-state loss.")] = 0.0,
    attention_weight: Annotated[float, typer.Option(help="distill/share: weight of the attention-map loss.")] = 0.0,
    backend: Annotated[
        str, typer.Option(help="int8: auto (time both, keep the faster), torch, torchao or none (int8 on disk only).")
    ] = "auto",
    scheme: Annotated[str, typer.Option(help="int8: dynamic (int8 activations too) or weight-only.")] = "dynamic",
    sparsity: Annotated[float, typer.Option(help="prune: share of encoder weights zeroed (unstructured).")] = 0.5,
    heads: Annotated[float, typer.Option(help="prune: share of each layer's heads removed (structured).")] = 0.0,
    ffn: Annotated[float, typer.Option(help="prune: share of each layer's FFN units removed (structured).")] = 0.0,
    epochs: Annotated[
        int | None, typer.Option(help="Training epochs (distill, share, recovery after pruning).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Training steps (wins over epochs).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: the source run's).")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Batch size (default: the source run's).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="report: where to write the figure (PNG).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Write a compressed copy of RUN to --out with compression.json (size, parameters, latency
    p50/p99 at batch 1 and 32, throughput and the task metric, beside the original's); or, as
    `kelm compress report RUN...`, print those records as one table and write a figure."""
    if targets[0] == "report":
        _report(targets[1:], plot, as_json)
        return
    if len(targets) != 1:
        raise ConfigError("kelm compress takes one RUN (or 'report' and several compressed runs)")
    if method is None or out_dir is None:
        raise ConfigError("kelm compress RUN needs --method and --out")
    from kelm.app.compress import METHODS, CompressOptions, compress_run

    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, not '{method}'")
    if backend not in ("auto", "torch", "torchao", "none"):
        raise ConfigError(f"--backend must be auto, torch, torchao or none, not '{backend}'")
    if scheme not in ("dynamic", "weight-only"):
        raise ConfigError(f"--scheme must be dynamic or weight-only, not '{scheme}'")
    train = {"epochs": epochs, "max_steps": max_steps, "lr": lr, "batch_size": batch_size}
    options = CompressOptions(
        method=method,  # type: ignore[arg-type]
        student=student,
        layers=_layers(layers),
        groups=groups,
        dim=dim,
        temperature=temperature,
        alpha=alpha,
        hidden_weight=hidden_weight,
        attention_weight=attention_weight,
        backend=backend,  # type: ignore[arg-type]
        scheme=scheme,  # type: ignore[arg-type]
        sparsity=sparsity,
        heads=heads,
        ffn=ffn,
        train={k: v for k, v in train.items() if v is not None},
    )
    record = compress_run(Path(targets[0]), out_dir, options)
    if as_json:
        typer.echo(json.dumps(record, indent=2, default=str))
        return
    from kelm.app.compress_report import report_rows

    _table(report_rows([out_dir]))
    out.print(f"wrote {out_dir}")


def _report(runs: list[str], plot: Path | None, as_json: bool) -> None:
    from kelm.app.compress_report import DEFAULT_PLOT, plot_report, report_rows

    if not runs:
        raise ConfigError("kelm compress report needs one or more compressed run folders")
    rows = report_rows(runs)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        _table(rows)
    path = plot_report(rows, plot if plot is not None else Path(runs[0]) / DEFAULT_PLOT)
    if not as_json:
        out.print(f"wrote {path}")


def _fmt(value: Any, digits: int | None = None) -> str:
    """Fixed ``digits``, or by size: 2 decimals under 10, 1 under 100, none above."""
    if value is None:
        return ""
    if digits is None:
        digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:,.{digits}f}"


def _table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="compression")
    for col in (
        "run",
        "method",
        "size MB",
        "params",
        "p50/p99 ms @1",
        "p50/p99 ms @32",
        "items/s",
        "metric",
        "retained",
    ):
        table.add_column(col, justify="left" if col in ("run", "method", "metric") else "right")
    for r in rows:
        retained = f"{r['retained']:.1%}" if r.get("retained") is not None else ""
        table.add_row(
            Path(r["run"]).name,
            r["method"],
            _fmt(r["size_mb"]) + (f" ({r['size_ratio']:.2f}×)" if "size_ratio" in r else ""),
            f"{_fmt(r['parameters'] / 1e6)} M",
            f"{_fmt(r['p50_ms_batch_1'])} / {_fmt(r['p99_ms_batch_1'])}",
            f"{_fmt(r['p50_ms_batch_32'])} / {_fmt(r['p99_ms_batch_32'])}",
            _fmt(r["items_per_second"], 0) + (f" ({r['speedup']:.2f}×)" if "speedup" in r else ""),
            f"{r['metric']} {_fmt(r['value'], 4)}",
            retained,
        )
    out.print(table)
