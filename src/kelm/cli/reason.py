"""`kelm reason`: mine Horn rules from a graph, evaluate them, answer queries with explanations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Rules mined from the graph, applied with the facts behind each answer.", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True, markup=False)

DatasetOpt = Annotated[str | None, typer.Option("--dataset", "-d", help="A registered data set or triple files.")]
GraphStoreOpt = Annotated[str | None, typer.Option("--store", "-s", help="An embedded store folder.")]
RulesArg = Annotated[Path, typer.Argument(help="A rules folder written by `kelm reason mine`.")]
AggregationOpt = Annotated[str, typer.Option("--aggregation", help="max (best rule first) or noisy-or.")]


def _graph(folder: Path | None, dataset: str | None, store: str | None):
    from kelm.reason.folder import folder_graph, graph_source

    return graph_source(dataset, store) if folder is None else folder_graph(folder, dataset, store)


@app.command("mine")
def mine_cmd(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for rules.tsv and mining.json.")],
    dataset: DatasetOpt = None,
    store: GraphStoreOpt = None,
    seconds: Annotated[float, typer.Option(help="Wall-clock budget of mining (all workers).")] = 60.0,
    workers: Annotated[int, typer.Option(help="Processes; relations are shared among them.")] = 1,
    max_length: Annotated[int, typer.Option("--max-length", help="Longest cyclic rule body (1-3).")] = 3,
    max_acyclic_length: Annotated[
        int, typer.Option("--max-acyclic-length", help="Longest acyclic rule body (0-3; 0: none).")
    ] = 2,
    min_support: Annotated[
        int, typer.Option("--min-support", help="Keep rules with this many correct predictions.")
    ] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the sampled paths.")] = 0,
    relations: Annotated[
        list[str] | None, typer.Option("--relation", "-r", help="Mine rules for this relation only (repeatable).")
    ] = None,
) -> None:
    """Sample paths from the training facts and keep the rules they generalise to (AnyBURL style)."""
    from kelm.reason.folder import mine_folder
    from kelm.reason.mining import MiningConfig

    config = MiningConfig(seconds=seconds, workers=workers, max_cyclic_length=max_length,
                          max_acyclic_length=max_acyclic_length, min_support=min_support, seed=seed)  # fmt: skip
    config.check()
    source = {"dataset": dataset} if dataset is not None else {"store": str(Path(store).resolve())} if store else {}
    kg = _graph(None, dataset, store)
    info = mine_folder(kg, out_dir, config, source, relations)
    kinds = ", ".join(f"{n} {k}" for k, n in info["by_kind"].items())
    out.print(f"{info['rules']} rules ({kinds}) for {info['relations_with_rules']} relations in {info['seconds']} s")
    out.print(f"wrote {out_dir / 'rules.tsv'}")


@app.command("evaluate")
def evaluate_cmd(
    rules: RulesArg,
    dataset: DatasetOpt = None,
    store: GraphStoreOpt = None,
    kge: Annotated[
        Path | None, typer.Option("--kge", help="A `kelm kge train` run: also rank with it and with the hybrid.")
    ] = None,
    split: Annotated[str, typer.Option(help="The split to rank.")] = "test",
    aggregation: AggregationOpt = "max",
    save: Annotated[
        bool, typer.Option("--save", help="With --kge: record the run and the chosen α in the folder's kge.json.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Filtered MRR and Hits@k of a split's facts, ranked by the rules (on the graph they were mined
    from unless --dataset or --store is given). With --kge, also by the KGE run alone and by the
    rules + KGE hybrid whose weight is chosen on the validation split; --save makes the folder rank
    by that hybrid (`kelm reason predict`, `kelm serve`)."""
    from kelm.errors import ConfigError
    from kelm.reason.folder import evaluate, open_folder
    from kelm.reason.hybrid import evaluate_with_kge
    from kelm.reason.model import save_kge_choice

    if save and kge is None:
        raise ConfigError("--save records a rules + KGE hybrid: give the KGE run with --kge")
    rule_set = open_folder(rules, _graph(rules, dataset, store))
    if kge is not None:
        result = evaluate_with_kge(rule_set, kge, aggregation, test=split)  # type: ignore[arg-type]
        if save:
            save_kge_choice(rules, kge, result, aggregation)
        rows = {"rules": result["rules"], "kge": result["kge"], f"hybrid (α={result['alpha']})": result["hybrid"]}
    else:
        result = evaluate(rule_set, split, aggregation)  # type: ignore[arg-type]
        rows = {"rules": result}
    if as_json:
        typer.echo(json.dumps(result))
        return
    keys = ("mrr", "hits@1", "hits@3", "hits@10", "mr")
    table = Table(title=f"{rules} on {split} ({aggregation})")
    table.add_column("ranked by")
    for key in keys:
        table.add_column(key, justify="right")
    for name, m in rows.items():
        table.add_row(name, *(f"{m[k]:.4f}" if k != "mr" else f"{m[k]:.1f}" for k in keys))
    out.print(table)


@app.command("predict")
def predict_cmd(
    rules: RulesArg,
    relation: Annotated[str, typer.Option("--relation", "-r", help="Relation id.")],
    head: Annotated[str | None, typer.Option("--head", help="Head entity id: rank tails.")] = None,
    tail: Annotated[str | None, typer.Option("--tail", help="Tail entity id: rank heads.")] = None,
    top: Annotated[int, typer.Option(help="How many answers.", min=1)] = 10,
    dataset: DatasetOpt = None,
    store: GraphStoreOpt = None,
    aggregation: Annotated[
        str | None, typer.Option("--aggregation", help="max or noisy-or (default: the folder's, else max).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The best answers of (--head, --relation, ?) or (?, --relation, --tail), each with the rules
    that predict it and one path of facts that makes each rule fire."""
    from kelm.reason.folder import predict
    from kelm.reason.model import load_reasoner

    reasoner = load_reasoner(rules, _graph(rules, dataset, store), aggregation)  # type: ignore[arg-type]
    result = predict(reasoner, relation, head, tail, top)
    if as_json:
        typer.echo(json.dumps(result))
        return
    asked = f"({head}, {relation}, ?)" if head is not None else f"(?, {relation}, {tail})"
    if not result["answers"]:
        out.print(f"{asked}: no rule fires")
        return
    table = Table(title=asked)
    for col in ("rank", "answer", "score", "why"):
        table.add_column(col, overflow="fold")
    for a in result["answers"]:
        why = (
            "\n".join(
                f"{r['rule']}  [{r['confidence']:.3f}]\n  " + "; ".join(_fact_text(f) for f in r["path"])
                for r in a["rules"]
            )
            or "(no rule fires: ranked by the KGE run)"
        )
        table.add_row(str(a["rank"]), a["id"], f"{a['score']:.4f}", why)
    out.print(table)


def _fact_text(fact: dict) -> str:
    source = f" ({fact['source']})" if fact.get("source") else ""
    return f"{fact['head']} {fact['relation']} {fact['tail']}{source}"
