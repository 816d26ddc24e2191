"""Evidence for an answer: the fact paths a relation-following model's score travelled along
(`followed_paths`), or the shortest fact paths (at most 3 hops) linking the topic to it
(`evidence_paths`, for models that follow no relations)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from kelm.kgqa.graph import QAGraph

Triple = tuple[str, str, str]


def evidence_paths(
    graph: QAGraph,
    topic: int,
    answer: int,
    max_hops: int = 3,
    within: Collection[int] | None = None,
    limit: int = 3,
    exclude: Collection[tuple[int, int, int]] = (),
) -> list[list[Triple]]:
    """Up to ``limit`` shortest paths from ``topic`` to ``answer`` as ``(head, relation, tail)`` name
    triples in the facts' own direction, walking facts both ways, only through ``within`` if given
    and never along the ``(head, relation, tail)`` index facts in ``exclude``.
    Empty if the answer is more than ``max_hops`` away."""
    if topic == answer:
        return []
    allowed = None if within is None else set(within)
    R = graph.num_relations
    # breadth-first distances from the topic, then paths rebuilt backwards from the answer
    dist = {topic: 0}
    frontier = [topic]
    preds: dict[int, list[tuple[int, int]]] = {}
    for d in range(1, max_hops + 1):
        nxt: list[int] = []
        for u in frontier:
            for step in sorted(graph.steps[u]):
                for v in graph.steps[u][step]:
                    if allowed is not None and v not in allowed:
                        continue
                    if exclude and ((u, step, v) if step < R else (v, step - R, u)) in exclude:
                        continue
                    if v not in dist:
                        dist[v] = d
                        nxt.append(v)
                    if dist[v] == d:
                        preds.setdefault(v, []).append((u, step))
        if answer in dist:
            break
        frontier = nxt
    if answer not in dist:
        return []

    def triple(u: int, step: int, v: int) -> Triple:
        if step < R:
            return (graph.names[u], graph.rel_names[step], graph.names[v])
        return (graph.names[v], graph.rel_names[step - R], graph.names[u])

    paths: list[list[Triple]] = []

    def walk(v: int, suffix: list[Triple]) -> None:
        if len(paths) >= limit:
            return
        if v == topic:
            paths.append(suffix)
            return
        for u, step in preds.get(v, []):
            walk(u, [triple(u, step, v), *suffix])

    walk(answer, [])
    return paths


def followed_paths(
    graph: QAGraph,
    nodes: Sequence[int],
    edges: Sequence[tuple[int, int, int]],
    scores: torch.Tensor,
    attention: torch.Tensor,
    hop: int,
    answer: int,
    limit: int = 3,
) -> list[list[Triple]]:
    """The paths along which a relation-following model's score reached ``answer`` in ``hop`` hops,
    best first (at most ``limit``), as ``(head, relation, tail)`` name triples in the facts' own
    direction.

    ``nodes`` are the subgraph's entity indices (the topic first), ``edges`` its directed
    ``(src, step, dst)`` in local positions (a step ``r + R`` walks a fact backward), ``scores``
    each node's score after every hop ``(hops, nodes)`` and ``attention`` each hop's weight per
    step ``(hops, 2R)``. A path's weight is the product of its steps' weights, the share of the
    answer's score it carried; the search walks back from the answer keeping the ``limit`` best
    partial paths, each ranked by its weight times the score its start held one hop earlier."""
    R = graph.num_relations
    into: dict[int, list[tuple[int, int]]] = {}
    for u, step, v in edges:
        into.setdefault(v, []).append((u, step))

    def triple(u: int, step: int, v: int) -> Triple:
        a, b = graph.names[nodes[u]], graph.names[nodes[v]]
        return (a, graph.rel_names[step], b) if step < R else (b, graph.rel_names[step - R], a)

    beams: list[tuple[float, float, int, list[Triple]]] = [(1.0, 1.0, answer, [])]
    for j in range(hop, 0, -1):
        grown = []
        for _, weight, v, suffix in beams:
            for u, step in into.get(v, ()):
                before = (1.0 if u == 0 else 0.0) if j == 1 else float(scores[j - 2, u])
                w = weight * float(attention[j - 1, step])
                if before > 0:
                    grown.append((w * before, w, u, [triple(u, step, v), *suffix]))
        beams = sorted(grown, key=lambda b: -b[0])[:limit]
    return [path for _, _, _, path in beams]


def path_rule(path: Sequence[Triple], topic: str) -> str:
    """The rule a fact path from ``topic`` to an answer instantiates, with ``X`` the question's
    entity, ``Y`` the answer and ``A``, ``B`` the entities between: ``answer(X, Y) <= r1(X, A), r2(Y, A)``."""
    names = {topic: "X"}
    at, atoms = topic, []
    for i, (h, r, t) in enumerate(path):
        nxt = t if h == at else h
        names.setdefault(nxt, "Y" if i == len(path) - 1 else "AB"[i] if i < 2 else f"V{i}")
        atoms.append(f"{r}({names[h]}, {names[t]})")
        at = nxt
    return "answer(X, Y) <= " + ", ".join(atoms)
