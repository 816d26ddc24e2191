"""Rule learning and reasoning: Horn rules mined from the graph, applied with explanations.

`mining.mine` samples paths bottom-up (AnyBURL style) and generalises them into cyclic and acyclic
rules of length 1-3 with support, standard and PCA confidence; `apply.RuleScorer` answers
``(h, r, ?)`` and ``(?, r, t)`` from the rules that fire, and `apply.RuleScorer.explain` gives the
rules and the concrete fact paths behind each answer.
"""

from kelm.reason.apply import RuleScorer
from kelm.reason.graph import RuleGraph
from kelm.reason.mining import MiningConfig, mine
from kelm.reason.rules import Rule, ScoredRule

__all__ = ["MiningConfig", "Rule", "RuleGraph", "RuleScorer", "ScoredRule", "mine"]
