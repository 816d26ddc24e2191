"""`kelm kgc`: text-based knowledge-graph completion (a bi-encoder over entity descriptions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kelm.cli.options import (
    OutDirOpt,
    RunOptions,
    TrainConfigArg,
    overrides_and_flags,
    run_options,
)
from kelm.errors import ConfigError, DataError

app = typer.Typer(help="Text-based KG completion: rank entities from their descriptions.", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)
AlphaOpt = Annotated[
    float | None, typer.Option(help="Hybrid weight of the text score (0..1); unset: chosen on the valid split.")
]


@app.command("train")
@run_options
def train_cmd(
    out_dir: OutDirOpt,
    config: TrainConfigArg = None,
    dataset: Annotated[str | None, typer.Option(help="Data-set name (see 'kelm data list') or folder.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Folder of data sets.")] = None,
    model: Annotated[str | None, typer.Option(help="minilm, tiny-bert or a checkpoint folder.")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", help="Tokens per text.")] = None,
    inductive: Annotated[
        float | None, typer.Option(help="Share of entities held out of training (inductive split).")
    ] = None,
    hybrid_kge: Annotated[Path | None, typer.Option("--hybrid-kge", help="A `kelm kge train` run to mix in.")] = None,
    alpha: AlphaOpt = None,
    entity_text: Annotated[
        str | None, typer.Option("--entity-text", help="description (default) or types (type labels, e.g. CoDEx).")
    ] = None,
    kepler: Annotated[bool | None, typer.Option("--kepler/--no-kepler", help="Add TransE + MLM losses.")] = None,
    *,
    opts: RunOptions,
) -> None:
    """Train a bi-encoder through the same engine and launcher as `kelm train`."""
    from kelm.cli.train import print_summary, train_or_launch

    if dataset is not None and Path(dataset).exists():
        dataset = str(Path(dataset).resolve())
    if model is not None and Path(model).exists():
        model = str(Path(model).resolve())
    data_root = str(data_dir.resolve()) if data_dir is not None else None
    kge = str(hybrid_kge.resolve()) if hybrid_kge is not None else None
    values = {
        "dataset": dataset,
        "data-dir": data_root,
        "model": model,
        "max-length": max_length,
        "inductive": inductive,
        "hybrid-kge": kge,
        "alpha": alpha,
        "entity-text": entity_text,
    }
    overrides, flags = overrides_and_flags(values, opts.train)
    overrides |= {"task.name": "text-kgc", "task.kepler": kepler}
    args = ["kgc", "train"] + (["--kepler" if kepler else "--no-kepler"] if kepler is not None else [])
    summary = train_or_launch(args, config, out_dir, opts, overrides, flags)
    if summary is not None:
        print_summary(summary, out_dir)
        if summary.get("test"):
            out.print("test " + ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()))
        if "alpha" in summary.get("valid", {}):
            given = summary.get("config", {}).get("task", {}).get("alpha") is not None
            how = "given" if given else "chosen on the valid split"
            out.print(f"hybrid alpha {summary['valid']['alpha']:g} ({how})")


@app.command("evaluate")
def evaluate_cmd(
    model_dir: Annotated[Path, typer.Option("--model", "-m", help="A text-kgc run folder or its model/ folder.")],
    hybrid_kge: Annotated[
        Path | None, typer.Option("--hybrid-kge", help="A `kelm kge train` run to mix in (instead of the run's).")
    ] = None,
    alpha: AlphaOpt = None,
    alpha_grid: Annotated[
        str | None, typer.Option("--alpha-grid", help="Comma-separated alphas tried on the valid split.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of lines.")] = False,
) -> None:
    """Rank the run's valid and test splits again, as text alone or as a hybrid (alpha chosen on valid)."""
    from kelm.tasks.text_kgc import evaluate_run

    if not model_dir.is_dir():
        raise DataError("model folder not found", model_dir)
    grid = None
    if alpha_grid is not None:
        try:
            grid = [float(x) for x in alpha_grid.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--alpha-grid: expected comma-separated numbers, got '{alpha_grid}'") from None
    result = evaluate_run(model_dir, hybrid_kge, alpha, grid)
    if as_json:
        typer.echo(json.dumps(result))
        return
    for split, metrics in result.items():
        out.print(f"{split} " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Rank every entity, from its text, as the missing tail (--head) or head (--tail) of a triple."""
    import torch

    from kelm.kgc.text_kgc import load_text_kgc

    if (head is None) == (tail is None):
        raise ConfigError("give exactly one of --head (rank tails) and --tail (rank heads)")
    if not model_dir.is_dir():
        raise DataError("model folder not found", model_dir)
    m = load_text_kgc(model_dir)
    e = _find(head if head is not None else tail, m.entity_ids, m.entity_labels, "entity")  # type: ignore[arg-type]
    r = _find(relation, m.relation_ids, m.relation_labels, "relation")
    scoring = m.scoring()
    with torch.no_grad():
        e_t, r_t = torch.tensor([e]), torch.tensor([r])
        scores = scoring.score_t(e_t, r_t) if head is not None else scoring.score_h(r_t, e_t)
    values, order = scores[0].float().topk(min(top, len(m.entity_ids)))
    answers = [
        {"rank": i + 1, "id": m.entity_ids[k], "label": m.entity_labels[k], "score": float(v)}
        for i, (k, v) in enumerate(zip(order.tolist(), values.tolist(), strict=True))
    ]
    if as_json:
        query = {"head": m.entity_ids[e]} if head is not None else {"tail": m.entity_ids[e]}
        typer.echo(json.dumps({**query, "relation": m.relation_ids[r], "answers": answers}))
        return
    ent, rel = m.entity_labels[e], m.relation_labels[r]
    table = Table(title=f"({ent}, {rel}, ?)" if head is not None else f"(?, {rel}, {ent})")
    for col, justify in (("rank", "right"), ("label", "left"), ("id", "left"), ("score", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for a in answers:
        table.add_row(str(a["rank"]), a["label"], a["id"], f"{a['score']:.4f}")
    out.print(table)
