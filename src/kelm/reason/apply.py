"""Answering ``(h, r, ?)`` and ``(?, r, t)`` from the rules that fire, with the paths behind them.

Each candidate collects the confidences of the rules that predict it. ``max`` ranks candidates by
their best rule, ties broken by the second and third best (AnyBURL's maximum aggregation);
``noisy-or`` by ``1 - prod(1 - c)``. Confidences are smoothed (``support / (body + smoothing)``)
so that a rule seen twice does not outrank one seen a thousand times. Candidates no rule predicts
score 0. `RuleScorer` has ``score_t``/``score_h``, so `kge.evaluation.FilteredRankEvaluator` ranks
it as it ranks any embedding model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy import sparse
from torch import Tensor

from kelm.errors import ConfigError
from kelm.reason.counts import body_entities
from kelm.reason.graph import RuleGraph, Step, reverse_steps
from kelm.reason.rules import ScoredRule

Aggregation = Literal["max", "noisy-or"]
_TIE = 1e-4  # weight of the second-best rule in max aggregation (the third gets _TIE**2)


@dataclass
class Explanation:
    """One answer: its score and, best first, the rules that predict it with one grounding each."""

    entity: int
    score: float
    rules: list[tuple[ScoredRule, float, list[int]]] = field(default_factory=list)  # rule, confidence, facts


def _best_of_each_kind(rules: list[ScoredRule], smoothing: float, limit: int) -> list[ScoredRule]:
    """A relation's rules, best first, at most ``limit`` of each kind: the many narrow ac1 rules
    of a large graph would otherwise crowd out the general cyclic and ac2 ones."""

    def best_first(found):
        return sorted(found, key=lambda s: -s.applied_confidence(smoothing))

    return best_first(
        [s for kind in ("cyclic", "ac1", "ac2") for s in best_first(r for r in rules if r.rule.kind == kind)[:limit]]
    )


class RuleScorer:
    """Scores every entity as an answer of link-prediction queries from mined rules."""

    def __init__(
        self,
        graph: RuleGraph,
        rules: Sequence[ScoredRule],
        aggregation: Aggregation = "max",
        smoothing: float = 5.0,
        max_rules_per_kind: int = 5_000,
    ):
        if aggregation not in ("max", "noisy-or"):
            raise ConfigError(f"aggregation must be 'max' or 'noisy-or', not '{aggregation}'")
        self.graph, self.aggregation, self.smoothing = graph, aggregation, smoothing
        self.num_entities = graph.num_entities
        by_head: dict[int, list[ScoredRule]] = defaultdict(list)
        for s in rules:
            by_head[s.rule.head].append(s)
        self.rules = {r: _best_of_each_kind(rs, smoothing, max_rules_per_kind) for r, rs in by_head.items()}
        self._bodies: dict[ScoredRule, np.ndarray] = {}

    # -- scores for the evaluator ---------------------------------------------------------------
    def score_t(self, h: Tensor, r: Tensor) -> Tensor:
        return self._scores(h.tolist(), r.tolist(), "tail")

    def score_h(self, r: Tensor, t: Tensor) -> Tensor:
        return self._scores(t.tolist(), r.tolist(), "head")

    def _scores(self, known: list[int], relations: list[int], side: str) -> Tensor:
        out = np.zeros((len(known), self.num_entities), np.float64)
        groups: dict[int, list[int]] = defaultdict(list)
        for i, rel in enumerate(relations):
            groups[rel].append(i)
        for rel, rows in groups.items():
            out[rows] = self._score_relation(rel, [known[i] for i in rows], side)
        return torch.from_numpy(out)

    def _score_relation(self, rel: int, known: list[int], side: str) -> np.ndarray:
        b, e = len(known), self.num_entities
        best = np.zeros((b, e, 3), np.float64)
        count = np.zeros((b, e), np.int8)
        log_miss = np.zeros((b, e), np.float64)
        one_hot = sparse.csr_matrix((np.ones(b, np.float32), (np.arange(b), known)), shape=(b, e))
        for s in self.rules.get(rel, ()):
            c = s.applied_confidence(self.smoothing)
            rows, cols = self._fired(s, known, one_hot, side)
            if not len(rows):
                continue
            if self.aggregation == "noisy-or":
                log_miss[rows, cols] += np.log1p(-min(c, 1 - 1e-12))
                continue
            k = count[rows, cols]
            room = k < 3
            best[rows[room], cols[room], k[room]] = c
            count[rows[room], cols[room]] += 1
        if self.aggregation == "noisy-or":
            return -np.expm1(log_miss)
        return best[..., 0] + _TIE * best[..., 1] + _TIE**2 * best[..., 2]

    def _fired(self, s: ScoredRule, known: list[int], one_hot: sparse.csr_matrix, side: str):
        """``(rows, candidates)`` the rule predicts for the queries whose given entity is ``known``."""
        rule, g = s.rule, self.graph
        if rule.kind == "cyclic":
            steps = rule.body if side == "tail" else reverse_steps(rule.body)
            reached = one_hot
            for rel, inverse in steps:
                reached = reached @ g.step(rel, inverse)
            reached = sparse.coo_matrix(reached)
            rows, cols = reached.row, reached.col
            keep = cols != np.asarray(known)[rows]
            return rows[keep], cols[keep]
        variable_side = "tail" if rule.anchor == "head" else "head"  # the side the variable answers
        known_arr = np.asarray(known)
        if side == variable_side:  # the query gives the variable: fires when it satisfies the body
            rows = np.flatnonzero(np.isin(known_arr, self._body(s)))
            return rows, np.full(len(rows), rule.head_constant)
        rows = np.flatnonzero(known_arr == rule.head_constant)  # the query gives the constant
        if not len(rows):
            return rows, rows
        cands = self._body(s)
        return np.repeat(rows, len(cands)), np.tile(cands, len(rows))

    def _body(self, s: ScoredRule) -> np.ndarray:
        """The entities satisfying an acyclic rule's body, as indices (kept: a body is small)."""
        if s not in self._bodies:
            self._bodies[s] = np.flatnonzero(body_entities(self.graph, s.rule)).astype(np.int32)
        return self._bodies[s]

    # -- answers with explanations --------------------------------------------------------------
    def explain(self, entity: int, relation: int, side: str = "tail", k: int = 10, per_answer: int = 3):
        """The top ``k`` answers of one query, each with up to ``per_answer`` rules and a grounding."""
        scores = self._score_relation(relation, [entity], side)[0]
        order = [int(i) for i in np.argsort(-scores, kind="stable")[:k] if scores[i] > 0]
        why = self.reasons(entity, relation, side, order, per_answer)
        return [Explanation(c, float(scores[c]), w) for c, w in zip(order, why, strict=True)]

    def reasons(
        self, entity: int, relation: int, side: str, answers: Sequence[int], per_answer: int = 3
    ) -> list[list[tuple[ScoredRule, float, list[int]]]]:
        """Per answer of one query (ranked by anything): its best ``per_answer`` rules that fire for
        it, each with the fact rows of one grounding; empty for an answer no rule predicts."""
        found: dict[int, list[tuple[ScoredRule, float, list[int]]]] = {a: [] for a in answers}
        one_hot = sparse.csr_matrix(([1.0], ([0], [entity])), shape=(1, self.num_entities), dtype=np.float32)
        for s in self.rules.get(relation, ()):
            open_ = {a for a, got in found.items() if len(got) < per_answer}
            if not open_:
                break
            _, cols = self._fired(s, [entity], one_hot, side)
            for a in open_.intersection(cols.tolist()):
                facts = self.grounding(s, entity, a, side)
                if facts is not None:
                    found[a].append((s, s.applied_confidence(self.smoothing), facts))
        return [found[a] for a in answers]

    def grounding(self, s: ScoredRule, given: int, answer: int, side: str) -> list[int] | None:
        """Fact rows of one path that makes the rule predict ``answer`` for the query, or None."""
        rule = s.rule
        head, tail = (given, answer) if side == "tail" else (answer, given)
        if rule.kind == "cyclic":
            return None if head == tail else self._path(head, rule.body, tail)
        variable, constant = (head, tail) if rule.anchor == "head" else (tail, head)
        if constant != rule.head_constant or variable == constant:
            return None
        return self._path(variable, rule.body, rule.body_constant, avoid=constant)

    def _path(self, start: int, steps: Sequence[Step], end: int | None, avoid: int | None = None) -> list[int] | None:
        """A path of facts from ``start`` along ``steps`` to ``end`` (anywhere when None) whose
        variables never bind to ``avoid``. The walk only enters entities from which the remaining
        steps still reach ``end``, so it never backtracks out of a dead end, however large the degrees."""
        g = self.graph
        target = np.zeros(self.num_entities, bool)
        if end is None:
            target[:] = True
            if avoid is not None:
                target[avoid] = False
        else:
            target[end] = True
        alive = g.reaching_each(target, steps, avoid)
        if not alive[0][start]:
            return None
        facts, at = [], start
        for i, (rel, inverse) in enumerate(steps):
            for p in g.edges(at):
                e = g.edge(p)
                if e.relation == rel and e.inverse == inverse and alive[i + 1][e.other]:
                    facts.append(e.fact)
                    at = e.other
                    break
        return facts
