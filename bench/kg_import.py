"""Bulk import of CoDEx-M (206k triples) into LadybugDB and a FalkorDB server: triples per second.

    KELM_DATA_DIR=../shared/data python bench/kg_import.py [--dataset codex-m] [--json]

Parsing the files is timed separately from the store import. An in-memory networkx
MultiDiGraph built from the same triples is the reference point.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import networkx as nx
from common import emit

from kelm.data import resolve, resolve_types
from kelm.kg.io import load_kg
from kelm.kg.store import open_store
from kelm.kg.store.falkordb_server import FalkorDBServer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="codex-m")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    kg, _ = load_kg(resolve(args.dataset), types_dir=resolve_types(args.dataset))
    parse_s = time.perf_counter() - t0
    n = kg.num_triples
    results: dict[str, object] = {
        "dataset": args.dataset,
        "triples": n,
        "entities": len(kg.entities),
        "parse_s": round(parse_s, 3),
    }

    with tempfile.TemporaryDirectory() as tmp, open_store(f"{tmp}/store", backend="ladybug") as gs:
        rep = gs.import_graph(kg)
        assert gs.stats().triples == n
    results["ladybug"] = {"seconds": round(rep.seconds, 3), "triples_per_s": round(rep.triples_per_second)}

    with FalkorDBServer() as server, open_store("bench", backend="falkordb", uri=server.uri) as gs:
        rep = gs.import_graph(kg)
        assert gs.stats().triples == n
    results["falkordb"] = {"seconds": round(rep.seconds, 3), "triples_per_s": round(rep.triples_per_second)}

    t0 = time.perf_counter()
    g = nx.MultiDiGraph()
    for split, triples in kg.splits.items():
        g.add_edges_from((t.head, t.tail, {"rel": t.relation, "split": split}) for t in triples)
    nx_s = time.perf_counter() - t0
    results["networkx_in_memory"] = {"seconds": round(nx_s, 3), "triples_per_s": round(n / nx_s)}
    emit("kg_import", results, args.json)


if __name__ == "__main__":
    main()
