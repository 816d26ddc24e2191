"""`kelm fuse train`: text classification with a knowledge graph fused into the language model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kelm.cli.finetune import _abs, out
from kelm.cli.options import (
    OutDirOpt,
    RunOptions,
    TrainConfigArg,
    overrides_and_flags,
    run_options,
)

app = typer.Typer(help="KG-enhanced language models: entity linking, subgraphs, GNN fusion.", no_args_is_help=True)


@app.command("train")
@run_options
def train_cmd(
    out_dir: OutDirOpt,
    config: TrainConfigArg = None,
    data: Annotated[str | None, typer.Option("--data", help="Data set name, or umls-groups (generated).")] = None,
    train_file: Annotated[Path | None, typer.Option("--train", metavar="FILE", help="id/text/label TSV.")] = None,
    dev_file: Annotated[Path | None, typer.Option("--dev", metavar="FILE")] = None,
    test_file: Annotated[Path | None, typer.Option("--test", metavar="FILE")] = None,
    kg: Annotated[str | None, typer.Option("--kg", help="Graph: registered name, file or folder.")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="lm, kg or joint.")] = None,
    fusion: Annotated[str | None, typer.Option("--fusion", help="concat or greaselm.")] = None,
    model: Annotated[str | None, typer.Option(help="minilm, tiny-bert or a checkpoint folder.")] = None,
    gnn: Annotated[str | None, typer.Option(help="rgcn or gat.")] = None,
    *,
    opts: RunOptions,
) -> None:
    """Train kg-enhanced-classification; metrics.json (valid, test) and model/ go to --out."""
    from kelm.cli.train import print_summary, train_or_launch

    kg_path = str(Path(kg).resolve()) if kg and Path(kg).exists() else kg
    task = {
        "dataset": data,
        "train": _abs(train_file),
        "dev": _abs(dev_file),
        "test": _abs(test_file),
        "kg": kg_path,
        "mode": mode,
        "fusion": fusion,
        "model": model,
        "gnn": gnn,
    }
    overrides, flags = overrides_and_flags(task, opts.train)
    overrides["task.name"] = "kg-enhanced-classification"
    flags["--data"] = flags.pop("--dataset")  # the flag is --data, the field dataset
    summary = train_or_launch(["fuse", "train"], config, out_dir, opts, overrides, flags)
    if summary is not None:
        print_summary(summary, out_dir)
        if summary.get("test"):
            out.print("test " + ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()))
