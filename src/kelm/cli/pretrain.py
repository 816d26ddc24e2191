"""`kelm pretrain`: masked or causal language-model pretraining of a Hugging Face model on plain text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kelm.cli.options import (
    OutDirOpt,
    RunOptions,
    TrainConfigArg,
    overrides_and_flags,
    run_options,
)


@run_options
def pretrain(
    out_dir: OutDirOpt,
    config: TrainConfigArg = None,
    objective: Annotated[str | None, typer.Option(help="mlm (masked) or clm (causal).")] = None,
    text: Annotated[
        list[Path] | None, typer.Option("--text", metavar="FILE_OR_DIR", help="Text file or folder (repeatable).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="tiny-bert, tiny-gpt2, minilm, a checkpoint folder or a hub id.")
    ] = None,
    block_size: Annotated[int | None, typer.Option(help="Tokens per packed block.")] = None,
    *,
    opts: RunOptions,
) -> None:
    """Pretrain on text: tokenized once (cached), packed into blocks; perplexity on a held-out tail."""
    from kelm.cli.train import print_summary, train_or_launch
    from kelm.errors import ConfigError

    if objective is not None and objective not in ("mlm", "clm"):
        raise ConfigError(f"--objective: unknown objective '{objective}' (use mlm or clm)")
    if config is None and opts.resume is None and objective is None:
        objective = "mlm"
    texts = [str(t.resolve()) for t in text] if text else None
    if model is not None and Path(model).exists():
        model = str(Path(model).resolve())
    values = {"text": texts, "model": model, "block-size": block_size}
    overrides, flags = overrides_and_flags(values, opts.train)
    overrides["task.name"], flags["--objective"] = objective, objective
    summary = train_or_launch(["pretrain"], config, out_dir, opts, overrides, flags)
    if summary is not None:
        print_summary(summary, out_dir)
