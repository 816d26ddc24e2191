"""`kelm fuse train`: text classification with a knowledge graph fused into the language model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kelm.cli.finetune import _abs, out
from kelm.cli.options import (
    BatchSizeOpt,
    EpochsOpt,
    LrOpt,
    MaxStepsOpt,
    NprocOpt,
    OutDirOpt,
    ResumeOpt,
    SeedOpt,
    TrainConfigArg,
)

app = typer.Typer(help="KG-enhanced language models: entity linking, subgraphs, GNN fusion.", no_args_is_help=True)


@app.command("train")
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
    max_steps: MaxStepsOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    resume: ResumeOpt = None,
    nproc: NprocOpt = None,
) -> None:
    """Train kg-enhanced-classification; metrics.json (valid, test) and model/ go to --out."""
    from kelm.cli.train import print_summary, train_or_launch

    overrides = {
        "task.name": "kg-enhanced-classification",
        "task.dataset": data,
        "task.train": _abs(train_file),
        "task.dev": _abs(dev_file),
        "task.test": _abs(test_file),
        "task.kg": str(Path(kg).resolve()) if kg and Path(kg).exists() else kg,
        "task.mode": mode,
        "task.fusion": fusion,
        "task.model": model,
        "task.gnn": gnn,
        "train.max_steps": max_steps,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.seed": seed,
    }
    flags = {
        "--data": data,
        "--train": _abs(train_file),
        "--dev": _abs(dev_file),
        "--test": _abs(test_file),
        "--kg": overrides["task.kg"],
        "--mode": mode,
        "--fusion": fusion,
        "--model": model,
        "--gnn": gnn,
        "--max-steps": max_steps,
        "--epochs": epochs,
        "--batch-size": batch_size,
        "--lr": lr,
        "--seed": seed,
    }
    launch_opts = (nproc, None, None, None, None, None)
    summary = train_or_launch(["fuse", "train"], config, out_dir, resume, overrides, flags, launch_opts)
    if summary is not None:
        print_summary(summary, out_dir)
        if summary.get("test"):
            out.print("test " + ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()))
