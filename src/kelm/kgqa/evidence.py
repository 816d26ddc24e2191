"""Evidence for an answer: the shortest fact paths (at most 3 hops) linking the topic to it."""

from __future__ import annotations

from collections.abc import Collection

from kelm.kgqa.graph import QAGraph

Triple = tuple[str, str, str]


def evidence_paths(
    graph: QAGraph,
    topic: int,
    answer: int,
    max_hops: int = 3,
    within: Collection[int] | None = None,
    limit: int = 3,
) -> list[list[Triple]]:
    """Up to ``limit`` shortest paths from ``topic`` to ``answer`` as ``(head, relation, tail)`` name
    triples in the facts' own direction, walking facts both ways, only through ``within`` if given.
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
