"""Anytime bottom-up rule mining, as AnyBURL does it.

Sample a training fact ``r(a, b)``, walk a random path from it that does not use the fact itself,
and generalise the path: a path from a back to b gives a cyclic rule, a path from a (or b) that
ends elsewhere gives ac1 (the end as a constant) and ac2 (length 1, the end free) rules. Each new
rule is counted once (`counts.score_rule`) and kept when its support and confidence pass the bars.
Mining stops at the time budget, or earlier once a window of samples finds no new rule.
Relations are shared among worker processes, which all stop at the one deadline.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np

from kelm.errors import ConfigError, DataError
from kelm.reason.counts import score_rule
from kelm.reason.graph import RuleGraph, Step
from kelm.reason.rules import Rule, ScoredRule

_SEND_SECONDS_PER_RULE = 2e-5  # a worker stops this early per kept rule, to send them in time


@dataclass(frozen=True)
class MiningConfig:
    """What to mine and for how long."""

    seconds: float = 60.0
    max_cyclic_length: int = 3
    max_acyclic_length: int = 2
    min_support: int = 2
    min_confidence: float = 0.0001
    saturation_window: int = 20_000  # stop after this many samples without a new rule
    max_starts: int = 5_000  # count a cyclic body on at most this many start entities
    workers: int = 1
    seed: int = 0
    #: how a sample picks its relation: "uniform", "facts" (a uniform random fact) or "sqrt" (in
    #: proportion to the square root of the relation's facts: frequent relations, which most
    #: queries ask about, get more samples, and rare ones are not starved)
    relation_sampling: str = "facts"

    def check(self) -> None:
        if not self.seconds > 0:
            raise ConfigError(f"the mining time budget must be positive, got {self.seconds} s")
        if not 1 <= self.max_cyclic_length <= 3 or not 0 <= self.max_acyclic_length <= 3:
            raise ConfigError("rule lengths: cyclic 1-3, acyclic 0-3")
        if self.min_support < 1 or self.workers < 1:
            raise ConfigError("min_support and workers must be at least 1")
        if self.relation_sampling not in ("uniform", "facts", "sqrt"):
            raise ConfigError(f"relation_sampling must be uniform, facts or sqrt, not '{self.relation_sampling}'")


def candidate_rules(graph: RuleGraph, fact: int, rng: np.random.Generator, config: MiningConfig) -> list[Rule]:
    """The rules that generalise one random path sampled around ``fact``."""
    a, r, b = (int(x) for x in graph.facts[fact])
    out: list[Rule] = []
    length = int(rng.integers(1, config.max_cyclic_length + 1))
    steps = _walk(graph, a, length - 1, fact, rng, avoid={a, b})
    if steps is not None:
        path, end = steps
        closing = graph.edges_to(end, b, fact)
        if len(closing):
            e = graph.edge(int(closing[int(rng.integers(len(closing)))]))
            out.append(Rule(r, (*path, (e.relation, e.inverse))))
    if config.max_acyclic_length:
        anchor, start, constant = ("head", a, b) if rng.random() < 0.5 else ("tail", b, a)
        length = int(rng.integers(1, config.max_acyclic_length + 1))
        steps = _walk(graph, start, length, fact, rng, avoid={a, b})
        if steps is not None:
            path, end = steps
            out.append(Rule(r, path, "ac1", anchor, constant, end))
            if length == 1:
                out.append(Rule(r, path, "ac2", anchor, constant))
    return [rule for rule in out if not rule.trivial]


def _walk(
    graph: RuleGraph, start: int, length: int, fact: int, rng: np.random.Generator, avoid: set[int]
) -> tuple[tuple[Step, ...], int] | None:
    """A random path of ``length`` steps from ``start`` through new entities, not using ``fact``."""
    node, steps, seen = start, [], set(avoid)
    for _ in range(length):
        edges = graph.edges(node)
        if not len(edges):
            return None
        e = graph.edge(edges[int(rng.integers(len(edges)))])
        if e.fact == fact or e.other in seen:
            return None
        steps.append((e.relation, e.inverse))
        node = e.other
        seen.add(node)
    return tuple(steps), node


def _mine_relations(
    graph: RuleGraph, relations: list[int], config: MiningConfig, seed: int, deadline: float, reserve: float = 0.0
) -> list[ScoredRule]:
    """Mine until ``deadline`` (a `time.monotonic` value), less ``reserve`` seconds per kept rule:
    the time a worker needs to send its rules back."""
    rng = np.random.default_rng(seed)
    seen: set[Rule] = set()
    kept: list[ScoredRule] = []
    since_new = 0
    sizes = np.array([len(graph.relation_facts[r]) for r in relations], np.float64)
    weight = {"uniform": np.ones_like(sizes), "facts": sizes, "sqrt": np.sqrt(sizes)}[config.relation_sampling]
    cumulative = np.cumsum(weight / weight.sum())
    while time.monotonic() + reserve * len(kept) < deadline and since_new < config.saturation_window:
        rel = relations[min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(relations) - 1)]
        facts = graph.relation_facts[rel]
        since_new += 1
        for rule in candidate_rules(graph, int(facts[int(rng.integers(len(facts)))]), rng, config):
            if rule in seen:
                continue
            seen.add(rule)
            since_new = 0
            scored = score_rule(graph, rule, config.max_starts)
            if scored.support >= config.min_support and scored.confidence >= config.min_confidence:
                kept.append(scored)
    return kept


def _mine_share(
    graph: RuleGraph, relations: list[int], config: MiningConfig, seed: int, deadline: float
) -> list[tuple]:
    """`_mine_relations` in a worker, its rules as plain tuples (they pickle several times faster)."""
    return [
        (s.rule.head, s.rule.body, s.rule.kind, s.rule.anchor, s.rule.head_constant, s.rule.body_constant,
         s.support, s.body_groundings, s.pca_body, s.sampled)
        for s in _mine_relations(graph, relations, config, seed, deadline, reserve=_SEND_SECONDS_PER_RULE)
    ]  # fmt: skip


def _unpack(row: tuple) -> ScoredRule:
    return ScoredRule(Rule(*row[:6]), *row[6:])


def prune_redundant(rules: list[ScoredRule]) -> list[ScoredRule]:
    """Drop ac1 rules that say no more than their ac2 generalisation (same confidence or less)."""
    general = {
        (s.rule.head, s.rule.anchor, s.rule.head_constant, s.rule.body): s.confidence
        for s in rules
        if s.rule.kind == "ac2"
    }
    out = []
    for s in rules:
        key = (s.rule.head, s.rule.anchor, s.rule.head_constant, s.rule.body)
        if s.rule.kind == "ac1" and general.get(key, -1.0) >= s.confidence:
            continue
        out.append(s)
    return out


def mine(graph: RuleGraph, config: MiningConfig = MiningConfig(), only: list[str] | None = None) -> list[ScoredRule]:
    """Rules for every relation with facts (or the relations named in ``only``), within
    ``config.seconds`` of wall time in all."""
    config.check()
    deadline = time.monotonic() + config.seconds  # one clock for every worker (monotonic is system-wide)
    if len(graph.facts) == 0:
        raise DataError("the graph has no facts to mine rules from")
    if only:
        relations = sorted({relation_named(graph, name) for name in only})
    else:
        relations = [r for r in range(graph.num_relations) if len(graph.relation_facts[r])]
    workers = min(config.workers, len(relations), os.cpu_count() or 1)
    if workers == 1:
        rules = _mine_relations(graph, relations, config, config.seed, deadline)
    else:  # relations dealt round-robin by size, so each worker gets a similar share of facts
        by_size = sorted(relations, key=lambda r: -len(graph.relation_facts[r]))
        shares = [by_size[k::workers] for k in range(workers)]
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            futures = [
                pool.submit(_mine_share, graph, s, config, config.seed + k, deadline) for k, s in enumerate(shares)
            ]
            rules = [_unpack(row) for f in futures for row in f.result()]
    return prune_redundant(rules)


def relation_named(graph: RuleGraph, name: str) -> int:
    """The index of relation ``name``; an unknown or factless relation is one clear error."""
    if name not in graph.relation_ids:
        raise ConfigError(f"unknown relation '{name}'")
    r = graph.relation_ids.index(name)
    if not len(graph.relation_facts[r]):
        raise DataError(f"relation '{name}' has no facts to mine rules from")
    return r
