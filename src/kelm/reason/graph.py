"""The graph as rules see it: one sparse adjacency matrix per relation and incident-edge lists."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

Step = tuple[int, bool]  # (relation, inverse): from u to v with r(u, v), or r(v, u) when inverse


def vocabulary_fingerprint(entity_ids: Sequence[str], relation_ids: Sequence[str]) -> str:
    """A short hash of the vocabularies: a rules file records it and refuses another graph."""
    h = hashlib.sha256()
    for part in ("entities", *entity_ids, "relations", *relation_ids):
        h.update(part.encode("utf-8") + b"\0")
    return h.hexdigest()[:16]


@dataclass
class Edge:
    """One fact seen from an entity: ``relation``, walked ``inverse``-ly or not, to ``other``."""

    relation: int
    inverse: bool
    other: int
    fact: int  # row in the fact array


class RuleGraph:
    """Facts ``(N, 3)`` (head, relation, tail) as CSR matrices, for counting and applying rules.

    ``step(r, inverse)`` is the ``E x E`` 0/1 matrix of one body step; a path's groundings are the
    product of its steps' matrices. Incident edges, both directions, serve the random walks.
    """

    def __init__(self, facts: np.ndarray, entity_ids: Sequence[str], relation_ids: Sequence[str]) -> None:
        self.facts = np.unique(np.asarray(facts, dtype=np.int64).reshape(-1, 3), axis=0)
        self.entity_ids, self.relation_ids = list(entity_ids), list(relation_ids)
        self.num_entities, self.num_relations = len(self.entity_ids), len(self.relation_ids)
        self.fingerprint = vocabulary_fingerprint(self.entity_ids, self.relation_ids)
        e = self.num_entities
        h, r, t = self.facts.T
        self._forward: list[sparse.csr_matrix] = []
        self._inverse: list[sparse.csr_matrix] = []
        for rel in range(self.num_relations):
            m = r == rel
            a = sparse.csr_matrix((np.ones(int(m.sum()), np.float32), (h[m], t[m])), shape=(e, e))
            self._forward.append(a)
            self._inverse.append(a.T.tocsr())
        self.relation_facts = [np.flatnonzero(r == rel) for rel in range(self.num_relations)]
        # incident edges as CSR over entities: out-edges (forward) and in-edges (inverse)
        ends = np.concatenate([h, t])
        order = np.argsort(ends, kind="stable")
        self._inc_relation = np.concatenate([r, r])[order]
        self._inc_inverse = np.concatenate([np.zeros(len(h), bool), np.ones(len(t), bool)])[order]
        self._inc_other = np.concatenate([t, h])[order]
        self._inc_fact = np.concatenate([np.arange(len(h)), np.arange(len(h))])[order]
        self._inc_offsets = np.zeros(e + 1, np.int64)
        np.add.at(self._inc_offsets, ends + 1, 1)
        self._inc_offsets = np.cumsum(self._inc_offsets)

    @classmethod
    def from_ids(cls, triples: Sequence[tuple[str, str, str]], entity_ids: Sequence[str], relation_ids: Sequence[str]):
        """From string triples over the given vocabularies."""
        e_idx = {x: i for i, x in enumerate(entity_ids)}
        r_idx = {x: i for i, x in enumerate(relation_ids)}
        rows = [(e_idx[h], r_idx[r], e_idx[t]) for h, r, t in triples]
        return cls(np.array(rows, dtype=np.int64).reshape(-1, 3), entity_ids, relation_ids)

    def step(self, relation: int, inverse: bool) -> sparse.csr_matrix:
        return self._inverse[relation] if inverse else self._forward[relation]

    def has_fact(self, head: int, relation: int, tail: int) -> bool:
        a = self._forward[relation]
        row = a.indices[a.indptr[head] : a.indptr[head + 1]]
        return bool(np.any(row == tail))

    def subjects(self, relation: int) -> np.ndarray:
        """Bool ``(E,)``: the entity has some fact ``relation(x, .)``."""
        return np.diff(self._forward[relation].indptr) > 0

    def objects(self, relation: int) -> np.ndarray:
        """Bool ``(E,)``: the entity has some fact ``relation(., y)``."""
        return np.diff(self._inverse[relation].indptr) > 0

    def edges(self, entity: int) -> range:
        """Positions of ``entity``'s incident edges (see `edge`)."""
        return range(int(self._inc_offsets[entity]), int(self._inc_offsets[entity + 1]))

    def edges_to(self, entity: int, other: int, not_fact: int) -> np.ndarray:
        """Positions of ``entity``'s edges that lead to ``other``, except those of fact ``not_fact``."""
        lo, hi = int(self._inc_offsets[entity]), int(self._inc_offsets[entity + 1])
        ok = (self._inc_other[lo:hi] == other) & (self._inc_fact[lo:hi] != not_fact)
        return lo + np.flatnonzero(ok)

    def degree(self, entity: int) -> int:
        return int(self._inc_offsets[entity + 1] - self._inc_offsets[entity])

    def edge(self, position: int) -> Edge:
        return Edge(
            int(self._inc_relation[position]),
            bool(self._inc_inverse[position]),
            int(self._inc_other[position]),
            int(self._inc_fact[position]),
        )

    def fact_ids(self, fact: int) -> tuple[str, str, str]:
        h, r, t = self.facts[fact]
        return self.entity_ids[h], self.relation_ids[r], self.entity_ids[t]

    def walk(self, start: int, steps: Sequence[Step]) -> np.ndarray:
        """Bool ``(E,)``: the entities reached from ``start`` along ``steps``."""
        v = np.zeros(self.num_entities, bool)
        v[start] = True
        return self.walk_set(v, steps)

    def walk_set(self, v: np.ndarray, steps: Sequence[Step]) -> np.ndarray:
        """Bool ``(E,)``: entities reached from any entity of ``v`` along ``steps``."""
        for rel, inverse in steps:
            # from u to v with m[u, v] = 1: reached = m^T @ current
            v = (self.step(rel, not inverse) @ v.astype(np.float32)) > 0
        return v

    def reaching(self, target: np.ndarray, steps: Sequence[Step], avoid: int | None = None) -> np.ndarray:
        """Bool ``(E,)``: entities from which ``steps`` reach some entity of ``target``, through
        entities other than ``avoid`` (the start itself may be any entity)."""
        return self.reaching_each(target, steps, avoid)[0]

    def reaching_each(self, target: np.ndarray, steps: Sequence[Step], avoid: int | None = None) -> list[np.ndarray]:
        """Per position ``i`` of the path (0 to ``len(steps)``), bool ``(E,)``: the entities from
        which ``steps[i:]`` reach ``target`` through entities other than ``avoid``; the inner
        positions exclude ``avoid`` themselves. One sparse product per step."""
        sets = [target]
        for i in range(len(steps) - 1, -1, -1):
            rel, inverse = steps[i]
            v = (self.step(rel, inverse) @ sets[0].astype(np.float32)) > 0
            if avoid is not None and i:
                v[avoid] = False
            sets.insert(0, v)
        return sets


def reverse_steps(steps: Sequence[Step]) -> tuple[Step, ...]:
    """The same path walked from its end back to its start."""
    return tuple((rel, not inverse) for rel, inverse in reversed(steps))
