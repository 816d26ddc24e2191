"""2-hop subgraph latency (p50/p99) over 1,000 random entities: LadybugDB, FalkorDB, networkx.

    KELM_DATA_DIR=../shared/data python bench/subgraph_latency.py [--dataset codex-m] [--json]

Each query returns the entities within 2 hops (edges followed in both directions) and every
fact among them, i.e. the induced subgraph. networkx answers the same question in memory with
``ego_graph(..., radius=2, undirected=True)``; the answers are checked to be identical.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable

import networkx as nx
from common import emit

from kelm.data import resolve, resolve_types
from kelm.kg.io import load_kg
from kelm.kg.store import open_store
from kelm.kg.store.falkordb_server import FalkorDBServer


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def timed(fn: Callable[[str], int], seeds: list[str]) -> tuple[dict[str, float], list[int]]:
    lat, sizes = [], []
    for s in seeds:
        t0 = time.perf_counter()
        sizes.append(fn(s))
        lat.append((time.perf_counter() - t0) * 1000)
    summary = {
        "p50_ms": round(percentile(lat, 0.5), 3),
        "p99_ms": round(percentile(lat, 0.99), 3),
        "mean_ms": round(statistics.fmean(lat), 3),
    }
    return summary, sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="codex-m")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--hops", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    kg, _ = load_kg(resolve(args.dataset), types_dir=resolve_types(args.dataset))
    seeds = random.Random(args.seed).sample(sorted(kg.entities), args.queries)

    g = nx.MultiDiGraph()
    g.add_nodes_from(kg.entities)
    for triples in kg.splits.values():
        g.add_edges_from((t.head, t.tail, {"rel": t.relation}) for t in triples)

    def nx_query(seed: str) -> int:
        return g.subgraph(nx.ego_graph(g, seed, radius=args.hops, undirected=True)).number_of_edges()

    results: dict[str, object] = {"dataset": args.dataset, "queries": args.queries, "hops": args.hops}
    results["networkx"], reference = timed(nx_query, seeds)
    results["mean_subgraph_facts"] = round(statistics.fmean(reference), 1)

    def store_query(gs) -> Callable[[str], int]:
        return lambda seed: len(gs.subgraph([seed], hops=args.hops).facts)

    with tempfile.TemporaryDirectory() as tmp:
        with open_store(f"{tmp}/store", backend="ladybug") as gs:
            gs.import_graph(kg)
        with open_store(f"{tmp}/store", backend="ladybug", read_only=True) as gs:
            results["ladybug"], sizes = timed(store_query(gs), seeds)
            assert sizes == reference, "ladybug subgraphs differ from networkx"
    with FalkorDBServer() as server, open_store("bench", backend="falkordb", uri=server.uri) as gs:
        gs.import_graph(kg)
        results["falkordb"], sizes = timed(store_query(gs), seeds)
        assert sizes == reference, "falkordb subgraphs differ from networkx"
    for backend in ("ladybug", "falkordb"):
        results[f"{backend}_p50_vs_networkx"] = round(
            results[backend]["p50_ms"] / results["networkx"]["p50_ms"],
            2,  # type: ignore[index]
        )
    emit("subgraph_latency", results, args.json)


if __name__ == "__main__":
    main()
