"""`kelm kgqa`: generate multi-hop questions from a graph store, train a QA model, ask it questions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from kelm.cli.options import (
    BackendOpt,
    ConfigOpt,
    OutDirOpt,
    RunOptions,
    StoreOpt,
    TrainConfigArg,
    UriOpt,
    overrides_and_flags,
    resolve_config,
    run_options,
    store_from_config,
)
from kelm.errors import ConfigError

app = typer.Typer(help="Question answering over a knowledge graph (1-3 hops).", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True, markup=False)


def _hops(text: str) -> tuple[int, ...]:
    try:
        return tuple(sorted({int(h) for h in text.split(",") if h.strip()}))
    except ValueError:
        raise ConfigError(f"--hops: expected a comma-separated list like 1,2,3, not '{text}'") from None


@app.command("generate")
def generate_cmd(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for {split}_{k}hop.txt and stats.json.")],
    store: StoreOpt = None,
    backend: BackendOpt = None,
    uri: UriOpt = None,
    config: ConfigOpt = None,
    hops: Annotated[str, typer.Option(help="Hop counts, comma-separated.")] = "1,2,3",
    per_entity: Annotated[int, typer.Option("--per-entity", help="Questions per topic entity and hop count.")] = 1,
    max_answers: Annotated[int, typer.Option("--max-answers", help="Skip paths with more answers.")] = 50,
    max_topics: Annotated[int | None, typer.Option("--max-topics", help="Use at most this many topics.")] = None,
    forward_only: Annotated[bool, typer.Option("--forward-only", help="No inverse relation steps.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the split and the sampled paths.")] = 0,
) -> None:
    """Questions along relation paths that exist in the graph, split by topic entity (80/10/10)."""
    from kelm.kgqa.generator import GeneratorConfig, generate, write_generated
    from kelm.kgqa.graph import QAGraph

    cfg = GeneratorConfig(
        hops=_hops(hops),
        per_entity=per_entity,
        max_answers=max_answers,
        seed=seed,
        inverse=not forward_only,
        max_topics=max_topics,
    )
    cfg.check()
    with store_from_config(resolve_config(config, store, backend, uri), read_only=True) as gs:
        graph = QAGraph.from_kg(gs.export())
    stats = write_generated(out_dir, graph, generate(graph, cfg), cfg)
    for split, counts in stats["questions"].items():
        out.print(f"{split:5s} " + ", ".join(f"{k} {n:,}" for k, n in counts.items()))
    out.print(f"wrote {out_dir}: {{train,dev,test}}_{{k}}hop.txt, entities.tsv, stats.json")


@app.command("train")
@run_options
def train_cmd(
    out_dir: OutDirOpt,
    config: TrainConfigArg = None,
    data: Annotated[Path | None, typer.Option("--data", help="Folder of generated question files.")] = None,
    store: Annotated[str | None, typer.Option("--store", "-s", help="The graph store (a LadybugDB folder).")] = None,
    model: Annotated[str | None, typer.Option("--model", help="lm (LM-only baseline) or kg (KG-enhanced).")] = None,
    encoder: Annotated[str | None, typer.Option(help="minilm, tiny-bert or a checkpoint folder.")] = None,
    *,
    opts: RunOptions,
) -> None:
    """Train a question-answering model through the training engine; test metrics per hop count."""
    from kelm.cli.train import print_summary, train_or_launch

    data_dir = str(data.resolve()) if data is not None else None
    store_path = str(Path(store).resolve()) if store is not None and Path(store).exists() else store
    task = {"data": data_dir, "store": store_path, "model": model, "encoder": encoder}
    overrides, flags = overrides_and_flags(task, opts.train)
    overrides["task.name"] = "kgqa"
    summary = train_or_launch(["kgqa", "train"], config, out_dir, opts, overrides, flags)
    if summary is not None:
        print_summary(summary, out_dir)
        if summary.get("test"):
            out.print("test " + ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()))


@app.command("ask")
def ask_cmd(
    question: Annotated[str, typer.Argument(help="A question naming its topic entity in [brackets].")],
    model_dir: Annotated[Path, typer.Option("--model", "-m", help="A kgqa run folder or its model/ folder.")],
    top: Annotated[int, typer.Option(help="At most this many answers.", min=1)] = 10,
    paths: Annotated[int, typer.Option(help="Evidence paths per answer.", min=0)] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Answer a question: answers with scores and the fact paths linking the topic to each."""
    from kelm.kgqa.answer import QAModel

    response = QAModel(model_dir).ask(question, top=top, paths=paths)
    if as_json:
        typer.echo(json.dumps(response.as_dict()))
        return
    if response.message:
        out.print(response.message)
        return
    out.print(f"topic: {response.topic}")
    for i, a in enumerate(response.answers, start=1):
        out.print(f"{i}. {a.name}  ({a.id}, p={a.score:.3f})")
        for p in a.evidence:
            out.print("     " + "  ->  ".join(f"({h}, {r}, {t})" for h, r, t in p))
