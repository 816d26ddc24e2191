"""Options shared by several commands, and the config they resolve to (flags override the file)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from kelm.app.config import KelmConfig
from kelm.config import load_config
from kelm.errors import ConfigError
from kelm.kg.store import BACKENDS, GraphStore, open_store
from kelm.train.config import FINETUNE_DEFAULTS, KGE_DEFAULTS, PRETRAIN_DEFAULTS

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file; flags override its values.")]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        "-s",
        envvar="KELM_STORE",
        help="Store: a folder for ladybug, a graph name for falkordb, a database for neo4j.",
    ),
]
BackendOpt = Annotated[
    str | None,
    typer.Option("--backend", "-b", envvar="KELM_STORE_BACKEND", help=f"One of: {', '.join(BACKENDS)}."),
]
UriOpt = Annotated[str | None, typer.Option("--uri", envvar="KELM_STORE_URI", help="Server URI for falkordb or neo4j.")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Folder of data sets (default: $KELM_DATA_DIR, then cache, then bundled)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def resolve_config(
    config: Path | None,
    store: str | None = None,
    backend: str | None = None,
    uri: str | None = None,
    data_dir: Path | None = None,
    **extra: object,
) -> KelmConfig:
    """Load ``config`` (if any) and apply the flags that were given."""
    overrides: dict[str, object] = {
        "store.path": store,
        "store.backend": backend,
        "store.uri": uri,
        "data.data_dir": None if data_dir is None else str(data_dir),
    }
    overrides.update(extra)
    return load_config(KelmConfig, config, overrides)


def store_from_config(cfg: KelmConfig, read_only: bool = False) -> GraphStore:
    """Open the store a config names; ``--store`` is required."""
    s = cfg.store
    if not s.path:
        raise ConfigError("no store given: pass --store PATH (or set [store] path in the config)")
    options = {k: v for k, v in (("user", s.user), ("password", s.password)) if v is not None}
    return open_store(s.path, backend=s.backend, uri=s.uri, read_only=read_only, **options)


# --- options shared by every training command ---------------------------------------------
OutDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Run folder: checkpoints, metrics, model.")]
TrainConfigArg = Annotated[
    Path | None, typer.Argument(help="TOML config with train and task tables; flags override it.")
]
StrategyOpt = Annotated[str | None, typer.Option(help="single, ddp, fsdp2 or diloco.")]
MaxStepsOpt = Annotated[int | None, typer.Option(help="Optimizer steps (wins over --epochs).")]
EpochsOpt = Annotated[int | None, typer.Option(help="Passes over the training data.")]
BatchSizeOpt = Annotated[int | None, typer.Option(help="Global batch size, summed over processes.")]


def _short(x: float) -> str:
    """``5e-5`` for 5e-05."""
    mantissa, exp = f"{x:.0e}".split("e")
    return f"{mantissa}e{int(exp)}"


LrOpt = Annotated[
    float | None,
    typer.Option(
        help=f"Peak learning rate (default: the task's, {_short(FINETUNE_DEFAULTS['lr'])} for fine-tuning with linear "
        f"decay after {FINETUNE_DEFAULTS['warmup_ratio']:.0%} warmup, {_short(PRETRAIN_DEFAULTS['lr'])} for mlm/clm "
        f"pretraining, {_short(KGE_DEFAULTS['lr'])} for KGE and kelm's own models)."
    ),
]
SeedOpt = Annotated[int | None, typer.Option(help="Seed for initialisation and data order.")]
ResumeOpt = Annotated[
    Path | None, typer.Option(help="Continue from a run or checkpoint folder (no CONFIG: reuse that run's config).")
]
NprocOpt = Annotated[int | None, typer.Option(help="Processes on this node (launches torchrun).")]
MaxRestartsOpt = Annotated[
    int | None, typer.Option(help="Restart a failed job this often; it resumes from its last checkpoint.")
]
NnodesOpt = Annotated[str | None, typer.Option(help="Nodes in the job: N or MIN:MAX.")]
NodeRankOpt = Annotated[int | None, typer.Option(help="This node's rank (static rendezvous).")]
RdzvEndpointOpt = Annotated[str | None, typer.Option(help="HOST:PORT on the first node where the nodes meet.")]
RdzvIdOpt = Annotated[str | None, typer.Option(help="Job id shared by all nodes (c10d rendezvous).")]


def overrides_and_flags(task: dict[str, Any], train: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Config overrides (``task.max_length``) and the flags that carry them to launched workers
    (``--max-length``), from flag-named values of the task and of ``[train]``."""
    overrides = {f"task.{k.replace('-', '_')}": v for k, v in task.items()}
    overrides |= {f"train.{k.replace('-', '_')}": v for k, v in train.items()}
    return overrides, {f"--{k}": v for k, v in (task | train).items()}


@dataclass(frozen=True)
class RunOptions:
    """The training and launch flags every training command takes (see `run_options`)."""

    strategy: str | None = None
    max_steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    resume: Path | None = None
    nproc: int | None = None
    max_restarts: int | None = None
    nnodes: str | None = None
    node_rank: int | None = None
    rdzv_endpoint: str | None = None
    rdzv_id: str | None = None

    @property
    def train(self) -> dict[str, Any]:
        """The ``[train]`` values, flag-named (for `overrides_and_flags`)."""
        names = ("strategy", "max_steps", "epochs", "batch_size", "lr", "seed")
        return {n.replace("_", "-"): getattr(self, n) for n in names}

    @property
    def launch(self) -> tuple[Any, ...]:
        """nproc, max_restarts, nnodes, node_rank, rdzv_endpoint, rdzv_id."""
        return (self.nproc, self.max_restarts, self.nnodes, self.node_rank, self.rdzv_endpoint, self.rdzv_id)


_RUN_FLAGS: dict[str, Any] = {
    "strategy": StrategyOpt,
    "max_steps": MaxStepsOpt,
    "epochs": EpochsOpt,
    "batch_size": BatchSizeOpt,
    "lr": LrOpt,
    "seed": SeedOpt,
    "resume": ResumeOpt,
    "nproc": NprocOpt,
    "max_restarts": MaxRestartsOpt,
    "nnodes": NnodesOpt,
    "node_rank": NodeRankOpt,
    "rdzv_endpoint": RdzvEndpointOpt,
    "rdzv_id": RdzvIdOpt,
}


def run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a training command the shared training and launch flags (`RunOptions`): the command
    declares a keyword-only ``opts: RunOptions`` and the CLI shows ``--strategy`` … ``--rdzv-id``."""
    sig = inspect.signature(command, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name != "opts"]
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    shared = [inspect.Parameter(n, kind, default=None, annotation=a) for n, a in _RUN_FLAGS.items()]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opts = RunOptions(**{n: kwargs.pop(n, None) for n in _RUN_FLAGS})
        return command(*args, opts=opts, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=own + shared)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in own + shared} | {"return": sig.return_annotation}
    return wrapper
