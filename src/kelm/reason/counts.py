"""Support, body groundings and PCA body of a rule, counted with sparse matrix products.

Counts are exact unless a cyclic body starts from more than ``max_starts`` entities; then a seeded
sample of start entities is counted and scaled up (``ScoredRule.sampled``), as AnyBURL does for
rules with huge groundings. Cyclic groundings bind X and Y to different entities. In an acyclic
rule the variables of the body never bind to the head constant (AnyBURL's object identity): else
``r(X, c) <= r(X, A), r(d, A)`` would count every ``r(x, c)`` as its own evidence through ``A = c``.
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy import sparse

from kelm.reason.graph import RuleGraph
from kelm.reason.rules import Rule, ScoredRule


def score_rule(graph: RuleGraph, rule: Rule, max_starts: int = 5_000) -> ScoredRule:
    """The rule with its counts over ``graph``'s facts."""
    if rule.kind == "cyclic":
        return _cyclic(graph, rule, max_starts)
    return _acyclic(graph, rule)


def _cyclic(graph: RuleGraph, rule: Rule, max_starts: int) -> ScoredRule:
    (first, inverse), rest = rule.body[0], rule.body[1:]
    m = graph.step(first, inverse)
    starts = np.flatnonzero(np.diff(m.indptr) > 0)
    sampled = len(starts) > max_starts
    scale = 1.0
    if sampled:
        rng = np.random.default_rng(zlib.crc32(repr(rule).encode()))
        chosen = np.sort(rng.choice(starts, max_starts, replace=False))
        scale, starts = len(starts) / max_starts, chosen
    paths = m[starts]
    for rel, inv in rest:
        paths = paths @ graph.step(rel, inv)
    paths = sparse.coo_matrix(paths)
    x, y = starts[paths.row], paths.col
    keep = x != y
    x, y = x[keep], y[keep]
    head = graph.step(rule.head, False)
    is_fact = np.asarray(head[x, y]).ravel() > 0 if len(x) else np.zeros(0, bool)
    has_head_fact = graph.subjects(rule.head)[x]
    return ScoredRule(
        rule,
        float(is_fact.sum()) * scale,
        float(len(x)) * scale,
        float(has_head_fact.sum()) * scale,
        sampled,
    )


def body_entities(graph: RuleGraph, rule: Rule) -> np.ndarray:
    """Bool ``(E,)``: the bindings of an acyclic rule's variable that satisfy its body."""
    if rule.kind == "ac1":
        target = np.zeros(graph.num_entities, bool)
        target[rule.body_constant] = True
    else:
        target = np.ones(graph.num_entities, bool)
        target[rule.head_constant] = False  # the dangling variable is not the constant
    found = graph.reaching(target, rule.body, avoid=rule.head_constant)
    found[rule.head_constant] = False  # the head would relate the constant to itself
    return found


def _acyclic(graph: RuleGraph, rule: Rule) -> ScoredRule:
    found = body_entities(graph, rule)
    c = rule.head_constant
    if rule.anchor == "head":  # r(X, c): facts r(x, c) are the rows of column c
        facts = graph.step(rule.head, True)
        with_head = graph.subjects(rule.head)
    else:  # r(c, Y)
        facts = graph.step(rule.head, False)
        with_head = graph.objects(rule.head)
    row = np.zeros(graph.num_entities, bool)
    row[facts.indices[facts.indptr[c] : facts.indptr[c + 1]]] = True
    return ScoredRule(rule, float((found & row).sum()), float(found.sum()), float((found & with_head).sum()))
