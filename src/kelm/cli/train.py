"""`kelm train`: train a task from a TOML config, in this process or on several through torchrun."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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


def _worker_args(
    command: list[str], config: Path | None, out_dir: Path, resume: Path | None, flags: dict[str, Any]
) -> list[str]:
    """The same command for each worker: absolute paths, no launch flags."""
    args = list(command)
    if config is not None:
        args.append(str(config.resolve()))
    args += ["--out", str(out_dir.resolve())]
    if resume is not None:
        args += ["--resume", str(resume.resolve())]
    for flag, value in flags.items():
        if value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            args += [flag, str(item)]
    return args


@run_options
def train(
    out_dir: OutDirOpt,
    config: TrainConfigArg = None,
    text: Annotated[
        list[Path] | None,
        typer.Option("--text", metavar="FILE", help="Text file or folder for causal-lm (repeatable)."),
    ] = None,
    *,
    opts: RunOptions,
) -> None:
    """Train a model: checkpoints every N steps, metrics (CSV, TensorBoard, metrics.json), final model."""
    texts = [str(t.resolve()) for t in text] if text else None
    overrides, flags = overrides_and_flags({"text": texts}, opts.train)
    summary = train_or_launch(["train"], config, out_dir, opts, overrides, flags)
    if summary is not None:
        print_summary(summary, out_dir)


def train_or_launch(
    command: list[str],
    config: Path | None,
    out_dir: Path,
    opts: RunOptions,
    overrides: dict[str, Any],
    flags: dict[str, Any],
) -> dict[str, Any] | None:
    """Train in this process, or, given launch flags outside torchrun, start torchrun workers that
    run ``kelm COMMAND`` with the same ``flags``. Returns the run summary on rank 0, else None."""
    from kelm.app.run import load_run_config, preflight, run_training
    from kelm.train.distributed import env_rank, launched_by_torchrun

    resume = opts.resume
    run = load_run_config(config, overrides, resume)
    nproc, max_restarts, nnodes, node_rank, rdzv_endpoint, rdzv_id = opts.launch
    if any(v is not None for v in opts.launch) and not launched_by_torchrun():
        from kelm.train.launch import LaunchSpec, check_spec, launch

        spec = LaunchSpec(
            nproc=nproc if nproc is not None else 1,
            max_restarts=max_restarts or 0,
            nnodes=nnodes or "1",
            node_rank=node_rank,
            rdzv_endpoint=rdzv_endpoint,
            rdzv_id=rdzv_id,
        )
        check_spec(spec)
        preflight(run, out_dir, resume, spec.world_size or spec.nproc)
        launch(spec, _worker_args(command, config, out_dir, resume, flags), threads=run.config.train.threads)
        return None
    summary = run_training(run, out_dir, resume=resume)
    return summary if env_rank() == 0 else None


def print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    procs = summary["world_size"]
    resumed = f", resumed at step {summary['start_step']}" if summary.get("start_step") else ""
    early = ", stopped early" if summary.get("stopped_early") else ""
    out.print(
        f"[bold]trained[/] {summary['task']} for {summary['steps']} steps{resumed}{early} "
        f"({summary['strategy']}, {procs} process{'es' if procs != 1 else ''}) in "
        f"{summary['wall_seconds']:.1f} s, {summary['tokens_per_second']:,.0f} tokens/s"
    )
    if summary.get("valid"):
        out.print("valid " + ", ".join(f"{k} {v:.4f}" for k, v in summary["valid"].items()))
    out.print(f"run folder {out_dir}: metrics.csv, metrics.json, checkpoints/, model/")
