"""`kelm finetune`: fine-tune a Hugging Face model for classification, NER or extractive QA."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kelm.cli.options import (
    OutDirOpt,
    RunOptions,
    TrainConfigArg,
    overrides_and_flags,
    run_options,
)

out = Console(highlight=False, soft_wrap=True)
FINETUNE_TASKS = ("classification", "ner", "qa")


def _abs(path: Path | None) -> str | None:
    return None if path is None else str(path.resolve())


@run_options
def finetune(
    out_dir: OutDirOpt,
    config: TrainConfigArg = None,
    task: Annotated[str | None, typer.Option(help="classification, ner or qa.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Registered data set (see 'kelm data list').")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Folder of data sets.")] = None,
    train_file: Annotated[Path | None, typer.Option("--train", metavar="FILE", help="Training file.")] = None,
    dev_file: Annotated[Path | None, typer.Option("--dev", metavar="FILE", help="Development file.")] = None,
    test_file: Annotated[Path | None, typer.Option("--test", metavar="FILE", help="Test file.")] = None,
    model: Annotated[
        str | None, typer.Option(help="minilm, tiny-bert, tiny-gpt2, a checkpoint folder or a hub id.")
    ] = None,
    max_length: Annotated[int | None, typer.Option(help="Longest input in tokens.")] = None,
    *,
    opts: RunOptions,
) -> None:
    """Fine-tune a model; metrics.json (valid, test), a classification report and model/ go to --out."""
    from kelm.cli.train import print_summary, train_or_launch
    from kelm.errors import ConfigError

    if task is not None and task not in FINETUNE_TASKS:
        raise ConfigError(f"--task: unknown task '{task}' (use {', '.join(FINETUNE_TASKS)})")
    if config is None and task is None:
        raise ConfigError("give --task (classification, ner or qa) or a CONFIG file with a [task] table")
    if model is not None and Path(model).exists():
        model = str(Path(model).resolve())
    values = {
        "dataset": dataset,
        "data-dir": _abs(data_dir),
        "train": _abs(train_file),
        "dev": _abs(dev_file),
        "test": _abs(test_file),
        "model": model,
        "max-length": max_length,
    }
    overrides, flags = overrides_and_flags(values, opts.train)
    overrides["task.name"], flags["--task"] = task, task
    summary = train_or_launch(["finetune"], config, out_dir, opts, overrides, flags)
    if summary is not None:
        print_summary(summary, out_dir)
        if summary.get("test"):
            out.print("test " + ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()))
