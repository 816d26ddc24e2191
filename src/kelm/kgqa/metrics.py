"""Answer-set metrics: Hits@1 and set F1, and how a score list becomes a predicted answer set.

The predicted set is the top-scored entity plus every entity whose probability is at least
``threshold`` times the top one's (``threshold = 1`` keeps the top entity alone). The threshold
is chosen on dev, from `THRESHOLDS`, as the one with the best mean F1.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)


def hits_at_1(top: int | str | None, gold: Collection[int | str]) -> float:
    """1 when the top prediction is a gold answer."""
    return 1.0 if top is not None and top in gold else 0.0


def set_f1(predicted: Collection[int | str], gold: Collection[int | str]) -> float:
    """F1 of a predicted answer set against the gold set (0 when either is empty)."""
    pred, ref = set(predicted), set(gold)
    hit = len(pred & ref)
    if not hit:
        return 0.0
    precision, recall = hit / len(pred), hit / len(ref)
    return 2 * precision * recall / (precision + recall)


def answer_set(candidates: Sequence[int], probs: Sequence[float], threshold: float) -> list[int]:
    """The top candidate and those with ``prob >= threshold * top prob``, best first."""
    if not candidates:
        return []
    order = sorted(range(len(candidates)), key=lambda i: -probs[i])
    top = probs[order[0]]
    return [candidates[i] for i in order if i == order[0] or probs[i] >= threshold * top]
