"""`kelm kge`: train knowledge-graph embeddings for link prediction and query a trained model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kelm.cli.options import (
    BackendOpt,
    OutDirOpt,
    RunOptions,
    TrainConfigArg,
    UriOpt,
    overrides_and_flags,
    run_options,
)
from kelm.errors import ConfigError, DataError

app = typer.Typer(help="Knowledge-graph embeddings: link prediction.", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)


@app.command("train")
@run_options
def train_cmd(
    out_dir: OutDirOpt,
    config: TrainConfigArg = None,
    dataset: Annotated[str | None, typer.Option(help="Data-set name (see 'kelm data list') or folder.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Folder of data sets.")] = None,
    model: Annotated[str | None, typer.Option(help="transe, distmult, complex, rotate or rescal.")] = None,
    dim: Annotated[int | None, typer.Option(help="Embedding size.")] = None,
    training: Annotated[str | None, typer.Option(help="1-n, 1-vs-all or negative-sampling.")] = None,
    unseen: Annotated[
        str | None,
        typer.Option(help="Valid/test triples with an entity or relation not in train: keep (default) or drop."),
    ] = None,
    skip_bad: Annotated[
        bool | None, typer.Option("--skip-bad", help="Skip and count malformed lines instead of failing.")
    ] = None,
    shard_entities: Annotated[
        bool | None,
        typer.Option(
            "--shard-entities", help="Shard the entity table row-wise over the --nproc processes (negative sampling)."
        ),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            help="Start from a trained run's embeddings (kept as trained); ids new in --dataset train. "
            "--resume RUN with --dataset does the same with RUN's config.",
        ),
    ] = None,
    *,
    opts: RunOptions,
) -> None:
    """Train a link-prediction model through the same engine and launcher as `kelm train`.

    Incremental training: ``--resume RUN --dataset GROWN --out NEW`` trains the entities and
    relations GROWN adds, from RUN's config, while RUN's embeddings stay exactly as trained."""
    from kelm.cli.train import print_summary, train_or_launch

    if dataset is not None and Path(dataset).exists():
        dataset = str(Path(dataset).resolve())
    data_root = str(data_dir.resolve()) if data_dir is not None else None
    task = {
        "dataset": dataset,
        "data-dir": data_root,
        "model": model,
        "dim": dim,
        "training": training,
        "unseen": unseen,
    }
    overrides, flags = overrides_and_flags(task, opts.train)
    overrides |= {"task.name": "link-prediction", "task.skip_bad": skip_bad, "task.shard_entities": shard_entities}
    if opts.resume is not None and dataset is not None:  # a trained run on a (grown) data set
        init_from, config = _incremental_source(opts.resume, config)
        opts = dataclasses.replace(opts, resume=None)
    if init_from is not None:
        init_from = init_from.resolve()
        overrides["task.init_from"] = str(init_from)
        flags["--init-from"] = str(init_from)
    switches = {"--skip-bad": skip_bad, "--shard-entities": shard_entities}
    command = ["kge", "train"] + [flag for flag, on in switches.items() if on]
    summary = train_or_launch(command, config, out_dir, opts, overrides, flags)
    if summary is not None:
        print_summary(summary, out_dir)
        if summary.get("test"):
            out.print("test " + ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()))
        subset, unseen_info = summary.get("test_without_unseen"), summary.get("test_unseen") or {}
        if subset and (unseen_info.get("test") or {}).get("unseen"):
            out.print(
                f"test without_unseen ({subset['triples']:,} triples) "
                + ", ".join(f"{k} {v:.4f}" for k, v in subset.items() if k != "triples")
            )


def _incremental_source(run: Path, config: Path | None) -> tuple[Path, Path]:
    """The model folder and config of incremental training from ``run`` (``--resume`` with ``--dataset``)."""
    from kelm.train.trainer import RUN_CONFIG

    run = run.resolve()
    if config is None:
        config = run / RUN_CONFIG
        if not config.is_file():
            raise ConfigError(
                f"--resume {run} with --dataset trains incrementally from that run, but it has no "
                f"{RUN_CONFIG}; give a config file"
            )
    return run, config


def _find(name: str, ids: list[str], labels: list[str], what: str) -> int:
    """Index of an entity or relation given by id, else by a unique label."""
    if name in ids:
        return ids.index(name)
    hits = [i for i, label in enumerate(labels) if label == name]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise ConfigError(f"{what} label '{name}' is ambiguous ({len(hits)} matches); give its id")
    raise ConfigError(f"unknown {what} '{name}' (not an id or label in the model's vocabulary)")


@app.command("predict")
def predict_cmd(
    model_dir: Annotated[Path, typer.Option("--model", "-m", help="A run folder or its model/ folder.")],
    relation: Annotated[str, typer.Option("--relation", "-r", help="Relation id or label.")],
    head: Annotated[str | None, typer.Option("--head", help="Head entity id or label: rank tails.")] = None,
    tail: Annotated[str | None, typer.Option("--tail", help="Tail entity id or label: rank heads.")] = None,
    top: Annotated[int, typer.Option(help="How many answers.", min=1)] = 10,
    store: Annotated[
        str | None,
        typer.Option(
            "--store", "-s", help="A store: mark answers it holds as known, with the sentences that support them."
        ),
    ] = None,
    backend: BackendOpt = None,
    uri: UriOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Rank every entity as the missing tail (--head) or head (--tail) of a triple.

    With ``--store``, an answer that is a fact of the store is marked known and comes with its
    evidence: the document and sentence each extracted fact was read from."""
    import torch

    from kelm.kg.vocab import ENTITIES_FILE, RELATIONS_FILE, read_vocab

    if (head is None) == (tail is None):
        raise ConfigError("give exactly one of --head (rank tails) and --tail (rank heads)")
    folder = model_dir / "model" if (model_dir / "model").is_dir() else model_dir
    if not folder.is_dir():
        raise DataError("model folder not found", folder)
    ent_ids, ent_labels = read_vocab(folder / ENTITIES_FILE)
    rel_ids, rel_labels = read_vocab(folder / RELATIONS_FILE)
    e = _find(head if head is not None else tail, ent_ids, ent_labels, "entity")  # type: ignore[arg-type]
    r = _find(relation, rel_ids, rel_labels, "relation")
    from kelm.kge.folder import load_kge

    model, _ = load_kge(folder)
    with torch.no_grad():
        e_t, r_t = torch.tensor([e]), torch.tensor([r])
        scores = model("score_t", e_t, r_t) if head is not None else model("score_h", r_t, e_t)
    values, order = scores[0].float().topk(min(top, len(ent_ids)))
    answers = [
        {"rank": i + 1, "id": ent_ids[k], "label": ent_labels[k], "score": float(v)}
        for i, (k, v) in enumerate(zip(order.tolist(), values.tolist(), strict=True))
    ]
    if store is not None:
        triples = [
            (ent_ids[e], rel_ids[r], a["id"]) if head is not None else (a["id"], rel_ids[r], ent_ids[e])
            for a in answers
        ]
        known, support = _known_facts(store, backend, uri, triples)
        for a, t in zip(answers, triples, strict=True):
            a["known"] = t in known
            a["evidence"] = support.get(t, [])
    if as_json:
        query = {"head": ent_ids[e]} if head is not None else {"tail": ent_ids[e]}
        typer.echo(json.dumps({**query, "relation": rel_ids[r], "answers": answers}))
        return
    asked = f"({ent_labels[e]}, {rel_labels[r]}, ?)" if head is not None else f"(?, {rel_labels[r]}, {ent_labels[e]})"
    table = Table(title=asked)
    for col, justify in (("rank", "right"), ("label", "left"), ("id", "left"), ("score", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    if store is not None:
        table.add_column("known")
        table.add_column("evidence", overflow="fold")
    for a in answers:
        cells = [str(a["rank"]), a["label"], a["id"], f"{a['score']:.4f}"]
        if store is not None:
            sources = "\n".join(f"{v['document']}: {v['sentence']}" for v in a["evidence"])
            cells += ["yes" if a["known"] else "", sources]
        table.add_row(*cells)
    out.print(table)


def _known_facts(
    store: str, backend: str | None, uri: str | None, triples: list[tuple[str, str, str]]
) -> tuple[set[tuple[str, str, str]], dict[tuple[str, str, str], list[dict]]]:
    """Which of ``triples`` the store holds, and the evidence of each."""
    from kelm.cli.kg import evidence_by_fact
    from kelm.cli.options import resolve_config, store_from_config

    cfg = resolve_config(None, store, backend, uri)
    with store_from_config(cfg, read_only=True) as gs:
        ids = sorted({x for t in triples for x in (t[0], t[2])})
        known = {(f.head, f.relation, f.tail) for f in gs.incident_facts(ids)} & set(triples)
        support = evidence_by_fact(gs, triples)
    return known, support
