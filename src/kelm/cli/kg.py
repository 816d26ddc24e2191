"""`kelm kg`: import, inspect, query and export knowledge graphs in a graph store."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from kelm.cli.options import (
    BackendOpt,
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    StoreOpt,
    UriOpt,
    resolve_config,
    store_from_config,
)
from kelm.errors import ConfigError, StoreError
from kelm.kg.importer import import_source, open_source
from kelm.kg.store import GraphStore
from kelm.kg.store.base import StoreStats, Subgraph
from kelm.progress import progress_bar

app = typer.Typer(help="Knowledge graphs in a graph store.", no_args_is_help=True)
out = Console()


@app.command("import")
def import_cmd(
    source: Annotated[str, typer.Argument(help="A data-set name (see 'kelm data list') or a file/folder.")],
    store: StoreOpt = None,
    backend: BackendOpt = None,
    uri: UriOpt = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    skip_bad: Annotated[
        bool | None, typer.Option("--skip-bad", help="Skip and count malformed lines instead of failing.")
    ] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Replace what the store holds.")] = False,
    append: Annotated[bool, typer.Option("--append", help="Add to what the store holds.")] = False,
    chunk_size: Annotated[int | None, typer.Option(help="Triples per import batch.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Import triples, RDF (N-Triples, Turtle) or a named data set into a store, all or nothing.

    A triple repeated within one file (one split) is stored once and counted as a duplicate; a
    triple in two splits stays in both, as published splits have it."""
    cfg = resolve_config(
        config, store, backend, uri, data_dir, **{"data.skip_bad": skip_bad, "data.chunk_size": chunk_size}
    )
    src = open_source(source, data_dir=cfg.data.data_dir, skip_bad=cfg.data.skip_bad, chunk_size=cfg.data.chunk_size)
    with store_from_config(cfg) as gs, progress_bar() as bar:
        task = bar.add_task(f"importing {src.name}", total=src.total_triples, info="")
        report = import_source(gs, src, replace=replace, append=append, progress=lambda n: bar.advance(task, n))
    read = src.read_report
    skipped, duplicates = read.total_skipped, read.total_duplicates
    if as_json:
        payload = {
            "source": src.name,
            "backend": cfg.store.backend,
            "store": cfg.store.path,
            "entities": report.entities,
            "relations": report.relations,
            "triples": report.triples,
            "seconds": report.seconds,
            "skipped": skipped,
            "skipped_by_file": {Path(f).name: n for f, n in read.skipped.items() if n},
            "duplicates": duplicates,
            "duplicates_by_file": {Path(f).name: n for f, n in read.duplicates.items() if n},
            "warnings": list(read.warnings),
        }
        typer.echo(json.dumps(payload))
        return
    out.print(
        f"imported {report.entities:,} new entities, {report.relations:,} new relations and "
        f"{report.triples:,} triples into {cfg.store.backend} store {cfg.store.path} "
        f"in {report.seconds:.2f} s ({report.triples_per_second:,.0f} triples/s)",
        highlight=False,
    )
    if skipped:
        out.print(
            f"skipped {skipped:,} bad lines: "
            + ", ".join(f"{Path(f).name}: {n}" for f, n in read.skipped.items() if n),
            highlight=False,
        )
    if duplicates:
        out.print(
            f"duplicates: {duplicates:,} repeated lines stored once ("
            + ", ".join(f"{Path(f).name}: {n}" for f, n in read.duplicates.items() if n)
            + ")",
            highlight=False,
        )
    for warning in read.warnings:
        out.print(f"warning: {warning}", highlight=False)


@app.command("stats")
def stats_cmd(
    store: StoreOpt = None,
    backend: BackendOpt = None,
    uri: UriOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Count entities, relations and triples per split."""
    cfg = resolve_config(config, store, backend, uri)
    with store_from_config(cfg, read_only=True) as gs:
        stats = gs.stats()
    if as_json:
        typer.echo(json.dumps(stats.to_dict()))
        return
    out.print(stats_table(stats, f"{cfg.store.backend} store {cfg.store.path}"))


def stats_table(stats: StoreStats, title: str) -> Table:
    """Entities, relations and triples per split as a Rich table."""
    table = Table(title=title)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("entities", f"{stats.entities:,}")
    table.add_row("relations", f"{stats.relations:,}")
    for split, n in stats.splits.items():
        table.add_row(f"triples ({split})", f"{n:,}")
    table.add_row("triples", f"{stats.triples:,}", style="bold")
    return table


def _parse_params(params: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in params:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param expects KEY=VALUE, got '{item}'")
        try:
            parsed[key] = json.loads(raw)
        except json.JSONDecodeError:
            parsed[key] = raw
    return parsed


@app.command("query")
def query_cmd(
    cypher: Annotated[str, typer.Argument(help="A read-only Cypher query.")],
    store: StoreOpt = None,
    backend: BackendOpt = None,
    uri: UriOpt = None,
    config: ConfigOpt = None,
    param: Annotated[list[str], typer.Option("--param", "-p", help="Query parameter KEY=VALUE (JSON).")] = [],  # noqa: B006
    as_json: JsonOpt = False,
) -> None:
    """Run read-only Cypher against the store (writes are refused)."""
    cfg = resolve_config(config, store, backend, uri)
    with store_from_config(cfg, read_only=True) as gs:
        rows = gs.query(cypher, _parse_params(param))  # plain values: every backend converts nodes and edges
    if as_json:
        typer.echo(json.dumps(rows, default=str))
        return
    table = Table(show_lines=False)
    for col in rows[0] if rows else []:
        table.add_column(str(col))
    for row in rows:
        table.add_row(*(json.dumps(v, default=str) if not isinstance(v, str) else v for v in row.values()))
    out.print(table)
    out.print(f"{len(rows)} row{'s' if len(rows) != 1 else ''}", style="dim")


def render_subgraph(sg: Subgraph, max_children: int = 6) -> Tree:
    """A breadth-first tree: each reached entity hangs under one fact linking it to the previous hop."""
    label = {eid: (e.label or eid) for eid, e in sg.entities.items()}
    children: dict[str, list[tuple[str, str]]] = {}
    placed = set(sg.seeds)
    for f in sg.facts:  # facts are sorted by hop distance, so parents come before children
        for parent, child, arrow in (
            (f.head, f.tail, f"─{f.relation}→"),
            (f.tail, f.head, f"←{f.relation}─"),
        ):
            if child not in placed and parent in sg.hops and sg.hops[child] == sg.hops[parent] + 1:
                children.setdefault(parent, []).append((child, arrow))
                placed.add(child)
    deepest = max(sg.hops.values(), default=0)
    root = Tree(
        f"[bold]{len(sg.entities)} entities and {len(sg.facts)} facts within {deepest} "
        f"hop{'s' if deepest != 1 else ''}[/]" + (" (truncated)" if sg.truncated else "")
    )

    def grow(branch: Tree, node: str) -> None:
        kids = children.get(node, [])
        for child, arrow in kids[:max_children]:
            grow(branch.add(f"{arrow} [green]{label[child]}[/]"), child)
        if len(kids) > max_children:
            branch.add(f"[dim]… {len(kids) - max_children} more[/]")

    for s in sg.seeds:
        grow(root.add(f"[bold cyan]{label[s]}[/]"), s)
    return root


@app.command("subgraph")
def subgraph_cmd(
    entities: Annotated[list[str], typer.Argument(help="Seed entity ids.")],
    hops: Annotated[int, typer.Option("--hops", "-k", min=0, help="Neighbourhood radius.")] = 2,
    max_entities: Annotated[int | None, typer.Option(help="Cap on entities returned.")] = None,
    fanout: Annotated[
        int | None, typer.Option(min=1, help="Sample at most this many new neighbours per entity and hop.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for --fanout sampling.")] = 0,
    store: StoreOpt = None,
    backend: BackendOpt = None,
    uri: UriOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The k-hop subgraph around one or more entities."""
    cfg = resolve_config(config, store, backend, uri)
    with store_from_config(cfg, read_only=True) as gs:
        sg = gs.subgraph(entities, hops=hops, max_entities=max_entities, fanout=fanout, seed=seed)
    if as_json:
        typer.echo(json.dumps(sg.to_json()))
    else:
        out.print(render_subgraph(sg))


@app.command("neighbors")
def neighbors_cmd(
    entity: Annotated[str, typer.Argument(help="Entity id.")],
    direction: Annotated[str, typer.Option(help="out, in or both.")] = "both",
    limit: Annotated[int | None, typer.Option(help="At most this many facts.")] = None,
    evidence: Annotated[
        bool, typer.Option("--evidence", help="Show the document and sentence behind each extracted fact.")
    ] = False,
    store: StoreOpt = None,
    backend: BackendOpt = None,
    uri: UriOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Facts that touch one entity."""
    cfg = resolve_config(config, store, backend, uri)
    with store_from_config(cfg, read_only=True) as gs:
        facts = gs.neighbors(entity, direction=direction, limit=limit)
        support = evidence_by_fact(gs, [(f.head, f.relation, f.tail) for f in facts]) if evidence else {}
    rows = [{"head": f.head, "relation": f.relation, "tail": f.tail, "split": f.split} for f in facts]
    if evidence:
        for r in rows:
            r["evidence"] = support.get((r["head"], r["relation"], r["tail"]), [])
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("head", "relation", "tail", "split", *(("evidence",) if evidence else ()))
    for r in rows:
        cells = [r["head"], r["relation"], r["tail"], r["split"] or ""]
        if evidence:
            cells.append("\n".join(f"{e['document']}: {e['sentence']}" for e in r["evidence"]))
        table.add_row(*cells)
    out.print(table)


def evidence_by_fact(
    gs: GraphStore, facts: list[tuple[str, str, str]]
) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """The evidence rows of each fact, as JSON-ready dicts."""
    found: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for e in gs.evidence(facts=facts):
        found.setdefault(e.fact(), []).append(e.to_json())
    return found


@app.command("documents")
def documents_cmd(
    store: StoreOpt = None,
    backend: BackendOpt = None,
    uri: UriOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The documents the store's extracted facts come from."""
    cfg = resolve_config(config, store, backend, uri)
    with store_from_config(cfg, read_only=True) as gs:
        docs = gs.documents()
        counts: dict[str, int] = {}
        for e in gs.evidence():
            counts[e.document] = counts.get(e.document, 0) + 1
    rows = [dataclasses.asdict(d) | {"evidence": counts.get(d.id, 0)} for d in docs]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("document", "source", "chars", "evidence", "extracted")
    for r in rows:
        table.add_row(r["id"], r["source"] or "", f"{r['chars']:,}", str(r["evidence"]), r["time"])
    out.print(table)


@app.command("delete")
def delete_cmd(
    document: Annotated[list[str], typer.Option("--document", "-d", help="Id of a document to delete (repeatable).")],
    store: StoreOpt = None,
    backend: BackendOpt = None,
    uri: UriOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete documents: facts only they support go; facts others support too lose only their evidence."""
    cfg = resolve_config(config, store, backend, uri)
    with store_from_config(cfg) as gs:
        present = {d.id for d in gs.documents(document)}
        missing = [d for d in document if d not in present]
        if missing:
            raise StoreError(
                f"no document {', '.join(repr(d) for d in missing)} in the store (see 'kelm kg documents')"
            )
        report = gs.apply_documents(deletes=list(dict.fromkeys(document)))
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    out.print(
        f"deleted {report.documents_deleted} document{'s' if report.documents_deleted != 1 else ''}: "
        f"-{report.facts_removed} facts, -{report.entities_removed} entities, -{report.evidence_removed} evidence",
        highlight=False,
    )


@app.command("export")
def export_cmd(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="tsv, nt or tensors.")] = "tsv",
    store: StoreOpt = None,
    backend: BackendOpt = None,
    uri: UriOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Export the store as TSV splits, N-Triples, or int64 tensors with vocabularies."""
    from kelm.kg.io import write_ntriples, write_tsv
    from kelm.kg.tensors import TripleTensors

    if fmt not in ("tsv", "nt", "tensors"):
        raise ConfigError(f"--format must be tsv, nt or tensors, not '{fmt}'")
    cfg = resolve_config(config, store, backend, uri)
    with store_from_config(cfg, read_only=True) as gs:
        kg = gs.export(name=Path(cfg.store.path or "kg").name)
    if fmt == "tsv":
        write_tsv(kg, out_dir)
    elif fmt == "nt":
        write_ntriples(kg, out_dir / "graph.nt")
    else:
        TripleTensors.from_graph(kg).save(out_dir)
    out.print(
        f"exported {len(kg.entities):,} entities, {len(kg.relations):,} relations and "
        f"{kg.num_triples:,} triples as {fmt} to {out_dir}",
        highlight=False,
    )
