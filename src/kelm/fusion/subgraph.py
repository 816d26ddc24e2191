"""The k-hop neighbourhood of linked entities as a PyG ``Data`` object.

Two sources with the same semantics as `GraphStore.subgraph`: breadth-first from the seeds,
following facts in both directions; at each hop every frontier entity (in sorted order, the
seeds in their given order) keeps at most ``fanout`` of its not yet reached neighbours, drawn
with ``random.Random(seed)`` from the sorted list; ``max_entities`` caps the total (cutting the
last hop in sorted order); the result holds every fact among the reached entities (the induced
subgraph).

- `Adjacency` works on in-memory `TripleTensors` (one split or several merged), with no store;
  it reproduces the store's sampling draw for draw, so both give the same subgraph.
- `store_subgraph` asks a `GraphStore` (LadybugDB, FalkorDB, Neo4j) through its ``subgraph`` API.

`to_data` turns either into ``Data(node_ids, edge_index, edge_type, seed_index, num_nodes)``:
``node_ids`` are global entity indices (the `TripleTensors` vocabulary), ``edge_index`` is local
to the subgraph (row 0 heads, row 1 tails), ``edge_type`` holds relation indices and
``seed_index`` the local positions of the seeds.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch_geometric.data import Data

from kelm.errors import StoreError
from kelm.kg.store.base import GraphStore
from kelm.kg.tensors import TripleTensors


class Adjacency:
    """Neighbour sets and the fact list of a graph given as index triples."""

    def __init__(self, triples: torch.Tensor, num_entities: int):
        self.triples = triples.reshape(-1, 3).long()
        self.num_entities = num_entities
        self.neighbors: list[set[int]] = [set() for _ in range(num_entities)]
        for h, _, t in self.triples.tolist():
            self.neighbors[h].add(t)
            self.neighbors[t].add(h)

    @classmethod
    def from_tensors(cls, tensors: TripleTensors, splits: Sequence[str] | None = None) -> Adjacency:
        """All facts of ``splits`` (default: every split), each distinct fact once."""
        names = list(tensors.triples) if splits is None else list(splits)
        triples = torch.cat([tensors.triples[s] for s in names]) if names else torch.zeros(0, 3, dtype=torch.int64)
        return cls(torch.unique(triples, dim=0), tensors.num_entities)

    def k_hop(
        self,
        seeds: Sequence[int],
        hops: int = 1,
        fanout: int | None = None,
        seed: int = 0,
        max_entities: int | None = None,
    ) -> tuple[list[int], torch.Tensor]:
        """Reached entities (seeds first, then by hop) and the ``(n, 3)`` facts among them."""
        if hops < 0:
            raise StoreError("hops must be >= 0")
        if fanout is not None and fanout < 1:
            raise StoreError("fanout must be >= 1")
        rng = random.Random(seed)
        dist = {s: 0 for s in dict.fromkeys(seeds)}
        frontier = list(dist)
        for hop in range(1, hops + 1):
            if not frontier:
                break
            new: set[int] = set()
            for node in frontier:
                found = sorted(n for n in self.neighbors[node] if n not in dist)
                if fanout is not None and len(found) > fanout:
                    found = rng.sample(found, fanout)
                new.update(found)
            ordered = sorted(new)
            cut = max_entities is not None and len(dist) + len(ordered) > max_entities
            if cut:
                ordered = ordered[: max(0, max_entities - len(dist))]  # type: ignore[operator]
            for node in ordered:
                dist[node] = hop
            frontier = ordered
            if cut:
                break
        nodes = list(dist)
        inside = torch.zeros(self.num_entities, dtype=torch.bool)
        inside[torch.tensor(nodes, dtype=torch.int64)] = True
        facts = self.triples[inside[self.triples[:, 0]] & inside[self.triples[:, 2]]]
        return nodes, facts


def store_subgraph(
    store: GraphStore,
    tensors: TripleTensors,
    seeds: Sequence[int],
    hops: int = 1,
    fanout: int | None = None,
    seed: int = 0,
    max_entities: int | None = None,
) -> tuple[list[int], torch.Tensor]:
    """The same as `Adjacency.k_hop`, read from a graph store; ids map through ``tensors``' vocabulary.

    The store holds every split, so this matches an `Adjacency` over all splits."""
    ents, rels = tensors.entity_index(), tensors.relation_index()
    names = [tensors.entity_ids[s] for s in seeds]
    sub = store.subgraph(names, hops=hops, max_entities=max_entities, fanout=fanout, seed=seed)
    nodes = [ents[e] for e in sub.hops]  # insertion order: seeds, then each hop sorted
    rows = sorted({(ents[f.head], rels[f.relation], ents[f.tail]) for f in sub.facts})
    return nodes, torch.tensor(rows, dtype=torch.int64).reshape(-1, 3)


def to_data(nodes: Sequence[int], facts: torch.Tensor, seeds: Sequence[int]) -> Data:
    """A PyG graph over ``nodes`` (global ids) with ``facts`` as typed edges; ``seed_index`` marks the seeds."""
    node_ids = torch.tensor(list(nodes), dtype=torch.int64)
    local = {int(n): i for i, n in enumerate(node_ids.tolist())}
    facts = facts.reshape(-1, 3)
    heads = torch.tensor([local[int(h)] for h in facts[:, 0].tolist()], dtype=torch.int64)
    tails = torch.tensor([local[int(t)] for t in facts[:, 2].tolist()], dtype=torch.int64)
    seed_index = torch.tensor([local[s] for s in dict.fromkeys(seeds) if s in local], dtype=torch.int64)
    return Data(
        node_ids=node_ids,
        edge_index=torch.stack([heads, tails]) if len(facts) else torch.zeros(2, 0, dtype=torch.int64),
        edge_type=facts[:, 1].clone(),
        seed_index=seed_index,
        num_nodes=len(node_ids),
    )


__all__ = ["Adjacency", "store_subgraph", "to_data"]
