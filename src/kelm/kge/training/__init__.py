"""KGE training regimes: 1-N (KvsAll), 1-vs-all and negative sampling, one small class each."""

from kelm.kge.training.base import TrainingRegime, TrueTriples, corrupted_scores
from kelm.kge.training.negative_sampling import NS_LOSSES, NegativeSampling, contrastive_loss
from kelm.kge.training.one_to_n import OneToN, Queries
from kelm.kge.training.one_vs_all import OneVsAll

#: Training mode name (``[task] training``) → regime.
MODES = ("1-n", "1-vs-all", "negative-sampling")
ONE_N_LOSSES = ("bce", "ce")

__all__ = [
    "MODES",
    "NS_LOSSES",
    "ONE_N_LOSSES",
    "NegativeSampling",
    "OneToN",
    "OneVsAll",
    "Queries",
    "TrainingRegime",
    "TrueTriples",
    "contrastive_loss",
    "corrupted_scores",
]
