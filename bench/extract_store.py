"""Update and delete by document against rebuilding the graph, on LadybugDB and FalkorDB.

    python bench/extract_store.py --documents 200 --evidence 200 --json

A corpus of synthetic documents (each with ``--evidence`` supporting sentences over a shared
entity pool, so documents share facts) is written with `GraphStore.apply_documents`; then one
document is re-extracted (replaced) and one deleted. The peer is what a store without evidence
per document must do to drop a document: rebuild the graph from the documents left
(``import_graph(replace=True)``, the bulk loader). Every timing is the best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kelm.kg.model import KnowledgeGraph, Triple
from kelm.kg.store import GraphStore, open_store
from kelm.kg.store.documents import DocumentFacts, DocumentRecord, Evidence


def corpus(n_docs: int, per_doc: int, n_entities: int, seed: int = 0, version: int = 0) -> list[DocumentFacts]:
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        evs = []
        for i in range(per_doc):
            h, t = rng.randrange(n_entities), rng.randrange(n_entities)
            rel = f"r{rng.randrange(5)}"
            evs.append(
                Evidence(
                    f"doc{d}",
                    f"e{h}",
                    rel,
                    f"e{t}",
                    f"sentence {i} of doc{d}",
                    i * 80,
                    i * 80 + 79,
                    i * 80,
                    i * 80 + 5,
                    i * 80 + 40,
                    i * 80 + 45,
                    "bench",
                    round(rng.random(), 3),
                    f"v{version}",
                )
            )
        docs.append(DocumentFacts(DocumentRecord(f"doc{d}", None, f"sha{version}", per_doc * 80, "bench", "t"), evs))
    return docs


def graph_of(docs: list[DocumentFacts]) -> KnowledgeGraph:
    kg = KnowledgeGraph("rebuilt")
    kg.add_triples("train", list({ev.fact(): Triple(*ev.fact()) for d in docs for ev in d.evidence}.values()))
    return kg


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_backend(backend: str, opener: Any, args: argparse.Namespace) -> dict[str, Any]:
    docs = corpus(args.documents, args.evidence, args.entities)
    changed = corpus(1, args.evidence, args.entities, seed=1, version=1)[0]
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        with opener() as store:
            s: GraphStore = store
            times = {
                "write corpus": timed(lambda s=s: s.apply_documents(docs)),
                "replace one document": timed(lambda s=s: s.apply_documents([changed])),
                "delete one document": timed(lambda s=s: s.apply_documents(deletes=["doc1"])),
            }
            facts = s.stats().triples
            left = [d for d in docs if d.document.id not in ("doc0", "doc1")] + [changed]
            times["peer: rebuild without one document"] = timed(
                lambda s=s, left=left: s.import_graph(graph_of(left), replace=True)
            )
        for k, v in times.items():
            best[k] = min(best.get(k, float("inf")), v)
    evidence = args.documents * args.evidence
    return {
        "backend": backend,
        "facts": facts,
        "evidence": evidence,
        "seconds": best,
        "evidence_per_second_write": evidence / best["write corpus"],
        "delete_speedup_vs_rebuild": best["peer: rebuild without one document"] / best["delete one document"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--documents", type=int, default=200)
    ap.add_argument("--evidence", type=int, default=200, help="supporting sentences per document")
    ap.add_argument("--entities", type=int, default=5_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--backends", nargs="+", default=["ladybug", "falkordb"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as root:
        for backend in args.backends:
            if backend == "ladybug":
                results.append(run_backend(backend, lambda: open_store(Path(root) / uuid.uuid4().hex, "ladybug"), args))
                continue
            from kelm.kg.store.falkordb_server import FalkorDBServer

            with FalkorDBServer() as server:
                results.append(
                    run_backend(
                        backend,
                        lambda server=server: open_store(f"b-{uuid.uuid4().hex[:8]}", "falkordb", uri=server.uri),
                        args,
                    )
                )
    if args.json:
        print(json.dumps(results, indent=1))
        return
    for r in results:
        print(f"{r['backend']}: {r['evidence']:,} evidence, {r['facts']:,} facts")
        for k, v in r["seconds"].items():
            print(f"  {k:38s} {v:8.3f} s")
        print(f"  delete vs rebuild: {r['delete_speedup_vs_rebuild']:.1f}x")


if __name__ == "__main__":
    main()
