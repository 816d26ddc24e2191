"""`kelm federate`: train one task across clients that keep their data, on Flower."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from kelm.errors import ConfigError

out = Console(highlight=False, soft_wrap=True)


def federate(
    targets: Annotated[
        list[str],
        typer.Argument(
            help="CONFIG (a TOML with [task], [train], [federate]) to simulate; 'server CONFIG' to serve it "
            "to client processes; 'client' to join a server with --data I/N."
        ),
    ],
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run folder: state, events, metrics, model.")
    ] = None,
    address: Annotated[str, typer.Option(help="server: HOST:PORT to listen on.")] = "127.0.0.1:9092",
    server: Annotated[str | None, typer.Option(help="client: the server's HOST:PORT.")] = None,
    data: Annotated[str | None, typer.Option(help="client: its part of the data, I/N.")] = None,
    work: Annotated[Path | None, typer.Option(help="client: folder for its local work.")] = None,
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
    """Train one task over clients that keep their data. `kelm federate CONFIG` simulates the
    clients on this machine; `kelm federate server CONFIG` waits for client processes, each
    started by `kelm federate client --server HOST:PORT --data I/N`. Each client trains through
    kelm's engine on its part, the server averages the updates for --rounds rounds and writes the
    global model, federate_state.pt (a restarted server resumes from it),
    federate_events.jsonl and metrics.json to --out."""
    from kelm.app.run import load_run_config

    if targets[0] == "client":
        if len(targets) != 1 or server is None or data is None:
            raise ConfigError("kelm federate client takes --server HOST:PORT and --data I/N, and no CONFIG")
        from kelm.app.federate.deploy import run_client

        run_client(server, data, work)
        return
    serve = targets[0] == "server"
    configs = targets[1:] if serve else targets
    if len(configs) != 1:
        raise ConfigError("kelm federate takes one CONFIG (kelm federate [server] CONFIG --out DIR)")
    if out_dir is None:
        raise ConfigError("kelm federate needs --out DIR")
    config = Path(configs[0])

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
    if serve:
        from kelm.app.federate.deploy import serve_federation

        summary = serve_federation(run, out_dir, address, verbose=verbose)
    else:
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
    if not metrics:
        return
    answered = metrics.get("clients")
    scores = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "clients")
    out.print(f"{title}: {scores}" + (f" ({answered:.0f} clients)" if answered is not None else ""))
