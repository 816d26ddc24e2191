"""`kelm federate`: train one task across clients that keep their data, on Flower."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from kelm.errors import ConfigError

out = Console(highlight=False, soft_wrap=True)


def federate(
    config: Annotated[Path, typer.Argument(help="TOML config: [task], [train] and [federate] tables.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run folder: state, events, metrics, model.")],
    clients: Annotated[int | None, typer.Option(help="Number of clients the data is split over.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds.")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="Epochs each client trains per round.")] = None,
    local_steps: Annotated[int | None, typer.Option(help="Optimizer steps per round (instead of epochs).")] = None,
    algorithm: Annotated[str | None, typer.Option(help="fedavg or fedprox.")] = None,
    proximal_mu: Annotated[float | None, typer.Option(help="FedProx's mu.")] = None,
    partition: Annotated[
        str | None, typer.Option(help="relation, entity or random (triples); iid or dirichlet (samples).")
    ] = None,
    alpha: Annotated[float | None, typer.Option(help="Dirichlet alpha of a non-IID split.")] = None,
    min_clients: Annotated[int | None, typer.Option(help="Good updates a round needs.")] = None,
    baseline: Annotated[
        str | None, typer.Option(help="'local': each client trains alone on its part, for comparison.")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Clients' learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Clients' batch size.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the initial model and the data order.")] = None,
    verbose: Annotated[bool, typer.Option(help="Flower's own log lines too.")] = False,
) -> None:
    """Simulate a federated run on this machine: the data is split over --clients clients, each
    trains through kelm's engine on its part, the server averages their updates for --rounds
    rounds and writes the global model, federate_state.pt (resumed when present),
    federate_events.jsonl and metrics.json to --out."""
    from kelm.app.run import load_run_config

    overrides: dict[str, Any] = {
        "federate.clients": clients,
        "federate.rounds": rounds,
        "federate.local_epochs": local_epochs,
        "federate.local_steps": local_steps,
        "federate.algorithm": algorithm,
        "federate.proximal_mu": proximal_mu,
        "federate.partition": partition,
        "federate.dirichlet_alpha": alpha,
        "federate.min_clients": min_clients,
        "train.lr": lr,
        "train.batch_size": batch_size,
        "train.seed": seed,
        "train.tensorboard": False,
    }
    run = load_run_config(config, overrides)
    if baseline not in (None, "local"):
        raise ConfigError(f"--baseline: expected 'local', not '{baseline}'")
    if baseline == "local":
        from kelm.app.federate.baselines import train_local_only

        summary = train_local_only(run, out_dir)
        _print_metrics("local-only, clients' own test data", summary["client_test"])
        return
    from kelm.app.federate.simulate import simulate

    summary = simulate(run, out_dir, verbose=verbose)
    fed = summary["federate"]
    out.print(
        f"[bold]federated[/] {summary['task']} over {fed['clients']} clients, {summary['rounds']} rounds "
        f"in {summary['wall_seconds']:.1f} s"
    )
    _print_metrics("global model, test", summary["test"])
    _print_metrics("global model, clients' own test data", summary["client_test"])
    out.print(f"run folder {out_dir}: metrics.json, federate_state.pt, federate_events.jsonl, model/")


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    if metrics:
        out.print(f"{title}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
