"""2-hop subgraph latency (p50/p99) over random entities: LadybugDB, FalkorDB, in-memory networkx.

    KELM_DATA_DIR=../shared/data python bench/subgraph_latency.py [--dataset codex-m] [--json]

Two settings, both returning the reached entities and every fact among them (the induced subgraph),
with edges followed in both directions:

* ``sampled``: at most ``--fanout`` new neighbours per entity and hop (the retrieval a GNN or a
  KG-augmented LM uses), over ``--queries`` (1,000) random entities;
* ``full``: the whole 2-hop neighbourhood, over ``--full-queries`` (100) random entities. On
  CoDEx-M a typical full 2-hop neighbourhood holds thousands of entities and tens of thousands of facts.

networkx answers the same questions from an in-memory graph with the same sampling procedure;
every answer is checked to be identical (entity set and fact count).
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
from kelm.kg.store import GraphStore, open_store
from kelm.kg.store.falkordb_server import FalkorDBServer

Answer = tuple[frozenset[str], int]


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def timed(fn: Callable[[str], Answer], seeds: list[str]) -> tuple[dict[str, float], list[Answer]]:
    lat, answers = [], []
    for s in seeds:
        t0 = time.perf_counter()
        answers.append(fn(s))
        lat.append((time.perf_counter() - t0) * 1000)
    summary = {
        "p50_ms": round(percentile(lat, 0.5), 3),
        "p99_ms": round(percentile(lat, 0.99), 3),
        "mean_ms": round(statistics.fmean(lat), 3),
    }
    return summary, answers


def networkx_query(multi: nx.MultiDiGraph, undirected: nx.Graph, hops: int, fanout: int | None) -> Callable:
    """The store's algorithm over networkx adjacency: BFS, per-entity sampling, induced facts."""

    def query(seed: str) -> Answer:
        rng = random.Random(0)
        dist = {seed: 0}
        frontier = [seed]
        for hop in range(1, hops + 1):
            new: set[str] = set()
            for node in frontier:
                cand = sorted(n for n in undirected[node] if n not in dist)
                if fanout is not None and len(cand) > fanout:
                    cand = rng.sample(cand, fanout)
                new.update(cand)
            frontier = sorted(new)
            dist.update({n: hop for n in frontier})
        return frozenset(dist), multi.subgraph(dist).number_of_edges()

    return query


def store_query(gs: GraphStore, hops: int, fanout: int | None) -> Callable[[str], Answer]:
    def query(seed: str) -> Answer:
        sg = gs.subgraph([seed], hops=hops, fanout=fanout)
        return frozenset(sg.hops), len(sg.facts)

    return query


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="codex-m")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--full-queries", type=int, default=100)
    ap.add_argument("--fanout", type=int, default=10)
    ap.add_argument("--hops", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    kg, _ = load_kg(resolve(args.dataset), types_dir=resolve_types(args.dataset))
    entities = sorted(kg.entities)
    settings = {
        "sampled": (args.fanout, random.Random(1).sample(entities, args.queries)),
        "full": (None, random.Random(2).sample(entities, args.full_queries)),
    }
    multi = nx.MultiDiGraph()
    multi.add_nodes_from(entities)
    for triples in kg.splits.values():
        multi.add_edges_from((t.head, t.tail, {"rel": t.relation}) for t in triples)
    undirected = nx.Graph(multi.to_undirected(as_view=True))

    results: dict[str, object] = {"dataset": args.dataset, "hops": args.hops, "fanout": args.fanout}
    reference: dict[str, list[Answer]] = {}
    for name, (fanout, seeds) in settings.items():
        summary, reference[name] = timed(networkx_query(multi, undirected, args.hops, fanout), seeds)
        results[f"{name}/networkx"] = summary
        results[f"{name}/mean_entities"] = round(statistics.fmean(len(a[0]) for a in reference[name]), 1)
        results[f"{name}/mean_facts"] = round(statistics.fmean(a[1] for a in reference[name]), 1)

    def run_backend(backend: str, gs: GraphStore) -> None:
        for name, (fanout, seeds) in settings.items():
            summary, answers = timed(store_query(gs, args.hops, fanout), seeds)
            assert answers == reference[name], f"{backend} {name} subgraphs differ from networkx"
            results[f"{name}/{backend}"] = summary
            nx_p50 = results[f"{name}/networkx"]["p50_ms"]  # type: ignore[index]
            results[f"{name}/{backend}_p50_vs_networkx"] = round(summary["p50_ms"] / nx_p50, 2)

    with tempfile.TemporaryDirectory() as tmp:
        with open_store(f"{tmp}/store", backend="ladybug") as gs:
            gs.import_graph(kg)
        with open_store(f"{tmp}/store", backend="ladybug", read_only=True) as gs:
            run_backend("ladybug", gs)
    with FalkorDBServer() as server, open_store("bench", backend="falkordb", uri=server.uri) as gs:
        gs.import_graph(kg)
        run_backend("falkordb", gs)
    emit("subgraph_latency", results, args.json)


if __name__ == "__main__":
    main()
