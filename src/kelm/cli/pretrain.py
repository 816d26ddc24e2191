"""`kelm pretrain`: masked or causal language-model pretraining of a Hugging Face model on plain text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kelm.cli.options import (
    BatchSizeOpt,
    EpochsOpt,
    LrOpt,
    MaxRestartsOpt,
    MaxStepsOpt,
    NnodesOpt,
    NodeRankOpt,
    NprocOpt,
    OutDirOpt,
    RdzvEndpointOpt,
    RdzvIdOpt,
    ResumeOpt,
    SeedOpt,
    StrategyOpt,
    TrainConfigArg,
    overrides_and_flags,
)


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
    strategy: StrategyOpt = None,
    max_steps: MaxStepsOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    seed: SeedOpt = None,
    resume: ResumeOpt = None,
    nproc: NprocOpt = None,
    max_restarts: MaxRestartsOpt = None,
    nnodes: NnodesOpt = None,
    node_rank: NodeRankOpt = None,
    rdzv_endpoint: RdzvEndpointOpt = None,
    rdzv_id: RdzvIdOpt = None,
) -> None:
    """Pretrain on text: tokenized once (cached), packed into blocks; perplexity on a held-out tail."""
    from kelm.cli.train import print_summary, train_or_launch
    from kelm.errors import ConfigError

    if objective is not None and objective not in ("mlm", "clm"):
        raise ConfigError(f"--objective: unknown objective '{objective}' (use mlm or clm)")
    if config is None and resume is None and objective is None:
        objective = "mlm"
    texts = [str(t.resolve()) for t in text] if text else None
    if model is not None and Path(model).exists():
        model = str(Path(model).resolve())
    values = {"text": texts, "model": model, "block-size": block_size}
    train_values = {"strategy": strategy, "max-steps": max_steps, "epochs": epochs, "batch-size": batch_size}
    overrides, flags = overrides_and_flags(values, train_values | {"lr": lr, "seed": seed})
    overrides["task.name"], flags["--objective"] = objective, objective
    launch_opts = (nproc, max_restarts, nnodes, node_rank, rdzv_endpoint, rdzv_id)
    summary = train_or_launch(["pretrain"], config, out_dir, resume, overrides, flags, launch_opts)
    if summary is not None:
        print_summary(summary, out_dir)
