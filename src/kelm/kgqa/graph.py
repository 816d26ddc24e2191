"""An in-memory adjacency of a knowledge graph for question answering, built from a store's export.

Entities and relations are numbered; each entity has a *name* used in question files: its label
made safe for the format (`clean_name`), or its id when it has none, and ``label (id)`` when two
entities would share a name. A *step* of a relation path is a relation index ``r`` (follow facts
forward, head to tail) or ``r + R`` (follow them backward, tail to head).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kelm.atomic import write_text_atomic
from kelm.errors import DataError
from kelm.kg.model import KnowledgeGraph
from kelm.kgqa.questions import clean_name

GRAPH_FILE = "graph.json"


@dataclass
class LocalSubgraph:
    """Nodes (global indices, the topic first) and forward facts among them as local ``(src, rel, dst)``."""

    nodes: list[int]
    src: list[int]
    rel: list[int]
    dst: list[int]


@dataclass
class QAGraph:
    ids: list[str]
    names: list[str]
    rel_ids: list[str]
    rel_names: list[str]
    triples: list[tuple[int, int, int]]
    by_name: dict[str, int] = field(init=False)
    by_id: dict[str, int] = field(init=False)
    steps: list[dict[int, list[int]]] = field(init=False, repr=False)
    neighbors: list[list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_name = {n: i for i, n in enumerate(self.names)}
        self.by_id = {e: i for i, e in enumerate(self.ids)}
        self.triples = sorted(set(self.triples))
        R = self.num_relations
        steps: list[dict[int, list[int]]] = [{} for _ in self.ids]
        nbrs: list[set[int]] = [set() for _ in self.ids]
        for h, r, t in self.triples:
            steps[h].setdefault(r, []).append(t)
            steps[t].setdefault(r + R, []).append(h)
            nbrs[h].add(t)
            nbrs[t].add(h)
        self.steps = steps
        self.neighbors = [sorted(s) for s in nbrs]

    @classmethod
    def from_kg(cls, kg: KnowledgeGraph) -> QAGraph:
        """Every entity, relation and fact of ``kg`` (all splits), with disambiguated names."""
        ids = sorted(kg.entities)
        rel_ids = sorted(kg.relations)
        base = [clean_name(kg.entities[e].label or "") or clean_name(e) or e for e in ids]
        counts = Counter(base)
        names = [n if counts[n] == 1 else f"{n} ({clean_name(e)})" for n, e in zip(base, ids, strict=True)]
        rel_names = [clean_name(kg.relations[r].label or "") or clean_name(r) for r in rel_ids]
        e_index = {e: i for i, e in enumerate(ids)}
        r_index = {r: i for i, r in enumerate(rel_ids)}
        triples = [(e_index[t.head], r_index[t.relation], e_index[t.tail]) for t in kg.triples()]
        return cls(ids, names, rel_ids, rel_names, triples)

    @classmethod
    def from_store(cls, path: str | Path, backend: str = "ladybug", uri: str | None = None) -> QAGraph:
        """The graph held by a store (opened read-only)."""
        from kelm.kg.store import open_store

        with open_store(path, backend=backend, uri=uri, read_only=True) as store:
            return cls.from_kg(store.export())

    # -- sizes and text -------------------------------------------------------------------------
    @property
    def num_entities(self) -> int:
        return len(self.ids)

    @property
    def num_relations(self) -> int:
        return len(self.rel_ids)

    def step_name(self, step: int) -> str:
        """The phrase of a step: the relation's name, ``inverse NAME`` when followed backward."""
        R = self.num_relations
        return self.rel_names[step] if step < R else f"inverse {self.rel_names[step - R]}"

    def find(self, name: str) -> int | None:
        """An entity by name, else by a unique case-insensitive name, else by id; None if none matches."""
        if name in self.by_name:
            return self.by_name[name]
        folded = name.casefold()
        hits = [i for i, n in enumerate(self.names) if n.casefold() == folded]
        if len(hits) == 1:
            return hits[0]
        return self.by_id.get(name)

    # -- paths ----------------------------------------------------------------------------------
    def follow(self, start: int, path: Sequence[int]) -> set[int]:
        """Every entity reached from ``start`` along the relation path ``path`` (steps)."""
        frontier = {start}
        for step in path:
            frontier = {v for u in frontier for v in self.steps[u].get(step, ())}
            if not frontier:
                break
        return frontier

    def subgraph(
        self, topic: int, hops: int = 3, fanout: int | None = None, max_nodes: int | None = None, seed: int = 0
    ) -> LocalSubgraph:
        """Entities within ``hops`` of ``topic`` (either direction) and the facts among them.

        ``fanout`` keeps at most that many new neighbours per entity and hop (sampled, seeded by
        ``seed`` and the topic, so the same topic always gets the same subgraph); ``max_nodes``
        caps the total, cutting the last hop."""
        rng = random.Random(f"{seed}:{topic}")
        order, seen = [topic], {topic}
        frontier = [topic]
        for _ in range(hops):
            new: list[int] = []
            for u in frontier:
                found = [v for v in self.neighbors[u] if v not in seen]
                if fanout is not None and len(found) > fanout:
                    found = sorted(rng.sample(found, fanout))
                for v in found:
                    if v not in seen:
                        seen.add(v)
                        new.append(v)
            if max_nodes is not None and len(order) + len(new) > max_nodes:
                new = new[: max(0, max_nodes - len(order))]
                seen = set(order) | set(new)
            order += new
            frontier = new
            if not frontier:
                break
        local = {g: i for i, g in enumerate(order)}
        R = self.num_relations
        src, rel, dst = [], [], []
        for g in order:
            for step, tails in self.steps[g].items():
                if step >= R:
                    continue
                for t in tails:
                    j = local.get(t)
                    if j is not None:
                        src.append(local[g])
                        rel.append(step)
                        dst.append(j)
        return LocalSubgraph(order, src, rel, dst)

    # -- files ----------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / GRAPH_FILE
        data = {
            "entities": [[e, n] for e, n in zip(self.ids, self.names, strict=True)],
            "relations": [[r, n] for r, n in zip(self.rel_ids, self.rel_names, strict=True)],
            "triples": [list(t) for t in self.triples],
        }
        write_text_atomic(path, json.dumps(data, separators=(",", ":")))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> QAGraph:
        path = Path(folder) / GRAPH_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            ents, rels = data["entities"], data["relations"]
            triples = [(int(h), int(r), int(t)) for h, r, t in data["triples"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"cannot read the question-answering graph ({err})", path) from None
        return cls([e for e, _ in ents], [n for _, n in ents], [r for r, _ in rels], [n for _, n in rels], triples)

    def entity_table(self) -> str:
        """``name<TAB>id`` lines: how question files' names map to entity ids."""
        return "".join(f"{n}\t{e}\n" for n, e in zip(self.names, self.ids, strict=True))


def names_to_indices(graph: QAGraph, names: Iterable[str], path: str | Path, line: int) -> list[int]:
    """Entity indices of answer names; an unknown name is a `DataError` at ``path:line``."""
    out = []
    for n in names:
        i = graph.by_name.get(n)
        if i is None:
            raise DataError(f"unknown entity '{n}' (not a name in the graph)", path, line)
        out.append(i)
    return out
