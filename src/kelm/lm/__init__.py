"""Language models. N-gram models: `ngram` (modified Kneser-Ney), `backoff` (scoring), `arpa` (files)."""

from kelm.lm.arpa import read_arpa, write_arpa
from kelm.lm.backoff import NgramLM, ScoreReport
from kelm.lm.ngram import check_order, read_sentences, train_kneser_ney

__all__ = ["NgramLM", "ScoreReport", "check_order", "read_arpa", "read_sentences", "train_kneser_ney", "write_arpa"]
