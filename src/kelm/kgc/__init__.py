"""LM and KG working together: text-based KG completion (SimKGC-style bi-encoder), its contrastive
loss, inductive splits, and hybrid text + structure scoring.

The task that trains it is `kelm.tasks.text_kgc` (``text-kgc``); this package holds the pieces
that know nothing of the engine.
"""

from kelm.kgc.inductive import InductiveSplit, inductive_split
from kelm.kgc.infonce import PreBatchQueue, contrastive_loss, known_answer_mask, triple_keys
from kelm.kge.mixing import HybridScoring, StructuralScorer, load_structural

__all__ = [
    "HybridScoring",
    "InductiveSplit",
    "PreBatchQueue",
    "StructuralScorer",
    "contrastive_loss",
    "inductive_split",
    "known_answer_mask",
    "load_structural",
    "triple_keys",
]
