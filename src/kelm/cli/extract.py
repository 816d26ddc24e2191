"""`kelm extract`: documents to facts in a store, each with the sentence that supports it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kelm.cli.options import BackendOpt, ConfigOpt, JsonOpt, StoreOpt, UriOpt, resolve_config, store_from_config
from kelm.errors import StoreError
from kelm.kg.store import GraphStore
from kelm.kg.store.documents import ChangeReport, DocumentFacts
from kelm.progress import progress_bar

out = Console(highlight=False, soft_wrap=True)


def extract(
    source: Annotated[
        Path, typer.Argument(help="A .txt file, a folder of .txt/.jsonl files, or JSONL with id and text.")
    ],
    model_dir: Annotated[Path, typer.Option("--model", "-m", help="A trained extractor: run folder or its model/.")],
    store: StoreOpt = None,
    backend: BackendOpt = None,
    uri: UriOpt = None,
    config: ConfigOpt = None,
    threshold: Annotated[
        float | None, typer.Option(help="Keep relations scoring at least this (default: the extractor's own).")
    ] = None,
    split: Annotated[str, typer.Option(help="Split of the facts extraction creates.")] = "train",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the triples; write nothing.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Extract documents the store has unchanged, too.")] = False,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip and count bad documents instead of failing.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Extract entities and relations from documents and upsert the triples into the store.

    Each triple keeps its evidence: document, sentence, character spans, extractor, score and time.
    A document extracted before is replaced as a whole, in one atomic write with all the others;
    `kelm kg delete --document ID` removes it again."""
    from kelm.extract.documents import DocumentReport, read_documents
    from kelm.extract.extractor import Extractor
    from kelm.extract.to_graph import MentionLinker, document_facts, now, sha256

    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise typer.BadParameter("must be within [0, 1]", param_hint="--threshold")
    cfg = resolve_config(config, store, backend, uri)
    read = DocumentReport()
    documents = list(read_documents(source, skip_bad=skip_bad, report=read))
    gs = _open(cfg, dry_run)
    try:
        known = {d.id: d for d in gs.documents([d.id for d in documents])} if gs is not None else {}
        linker = MentionLinker(gs.iter_entities() if gs is not None else ())
        extractor = Extractor.from_pretrained(model_dir)
        if threshold is not None:
            extractor.threshold = threshold
        name = extractor.name
        todo = [
            d
            for d in documents
            if force or d.id not in known or (known[d.id].sha256, known[d.id].extractor) != (sha256(d.text), name)
        ]
        writes: list[DocumentFacts] = []
        time = now()
        with progress_bar() as bar:
            task = bar.add_task("extracting", total=sum(len(d.text) for d in todo), info="")
            for doc in todo:
                writes.append(document_facts(doc, extractor.extract(doc.text), linker, name, time=time))
                bar.advance(task, len(doc.text))
        report = ChangeReport() if dry_run or gs is None else gs.apply_documents(writes, split=split)
    finally:
        if gs is not None:
            gs.close()
    summary = {
        "documents": len(documents),
        "extracted": len(todo),
        "unchanged": len(documents) - len(todo),
        "skipped": len(read.skipped),
        "skipped_documents": read.skipped,
        "triples": sum(len(w.evidence) for w in writes),
        "dry_run": dry_run,
        "store": None if dry_run else {"backend": cfg.store.backend, "path": cfg.store.path, **report.to_dict()},
    }
    if as_json:
        if dry_run:
            summary["facts"] = [_fact_json(w) for w in writes]
        typer.echo(json.dumps(summary))
        return
    if dry_run:
        out.print(_facts_table(writes))
    _print_summary(summary)


def _open(cfg: Any, dry_run: bool) -> GraphStore | None:
    """The store: writable, or for a dry run read-only when it exists (None when it does not)."""
    if not dry_run:
        return store_from_config(cfg)
    if not cfg.store.path:
        return None
    try:
        return store_from_config(cfg, read_only=True)
    except StoreError:
        return None


def _fact_json(w: DocumentFacts) -> dict[str, Any]:
    return {
        "document": w.document.id,
        "triples": [e.to_json() for e in w.evidence],
    }


def _facts_table(writes: list[DocumentFacts]) -> Table:
    table = Table(title="triples (dry run: nothing written)")
    for col in ("document", "head", "relation", "tail", "score", "sentence"):
        table.add_column(col, overflow="fold")
    for w in writes:
        for e in w.evidence:
            table.add_row(w.document.id, e.head, e.relation, e.tail, f"{e.score:.2f}", e.sentence)
    return table


def _print_summary(s: dict[str, Any]) -> None:
    line = (
        f"{s['documents']} documents: {s['extracted']} extracted, {s['unchanged']} unchanged, "
        f"{s['skipped']} skipped; {s['triples']} triples"
    )
    out.print(line)
    for reason in s["skipped_documents"]:
        out.print(f"skipped: {reason}")
    st = s["store"]
    if st is not None:
        out.print(
            f"{st['backend']} store {st['path']}: +{st['facts_added']} / -{st['facts_removed']} facts, "
            f"+{st['entities_added']} / -{st['entities_removed']} entities, "
            f"+{st['evidence_added']} / -{st['evidence_removed']} evidence"
        )
