"""Metrics of the fine-tuning tasks, computed exactly across ranks.

The engine combines each rank's evaluation metrics as a mean weighted by ``batch_weight``. Plain
means (accuracy, exact match, loss) pass through that unchanged. Metrics that are not means
(macro-F1, entity F1) travel as *count statistics* divided by the rank's weight: the weighted
mean of ``count / n`` over ranks is ``total count / total n``, and since precision, recall and F1
are ratios of counts, `finalize` computes them exactly from those shares and drops the
statistics (keys starting with ``_``).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

STAT = "_"  # prefix of count statistics; never reaches metrics.json


def stat_keys(kind: str, names: Sequence[str]) -> list[str]:
    return [f"{STAT}{kind}/{name}" for name in names]


def count_stats(tp: dict[str, int], pred: dict[str, int], gold: dict[str, int], names: Sequence[str], n: float):
    """``{_tp/name: tp/n, _pred/name: ..., _gold/name: ...}`` for every name (all ranks send the same keys)."""
    scale = 1.0 / n if n else 0.0
    out: dict[str, float] = {}
    for kind, counts in (("tp", tp), ("pred", pred), ("gold", gold)):
        for name in names:
            out[f"{STAT}{kind}/{name}"] = counts.get(name, 0) * scale
    return out


def split_stats(metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Plain metrics, and the statistics as ``{name: {tp, pred, gold}}`` (shares, not counts)."""
    plain: dict[str, float] = {}
    per: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith(STAT):
            kind, name = key[len(STAT) :].split("/", 1)
            per.setdefault(name, {})[kind] = value
        else:
            plain[key] = value
    return plain, per


def prf(tp: float, pred: float, gold: float) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts (or shares of counts); 0 where undefined."""
    p = tp / pred if pred > 0 else 0.0
    r = tp / gold if gold > 0 else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


def macro_f1(per: dict[str, dict[str, float]]) -> float:
    """Mean F1 over the labels that occur in the gold labels or the predictions (scikit-learn's choice)."""
    scores = [prf(s["tp"], s["pred"], s["gold"])[2] for s in per.values() if s["pred"] > 0 or s["gold"] > 0]
    return sum(scores) / len(scores) if scores else 0.0


def micro_prf(per: dict[str, dict[str, float]]) -> tuple[float, float, float]:
    tp = sum(s["tp"] for s in per.values())
    pred = sum(s["pred"] for s in per.values())
    gold = sum(s["gold"] for s in per.values())
    return prf(tp, pred, gold)


def report_table(per: dict[str, dict[str, float]], total: float, title: str) -> str:
    """A per-label precision / recall / F1 / support table; ``total`` turns shares back into counts."""
    width = max([len(name) for name in per] + [12])
    lines = [title, "", f"{'':>{width}}  precision     recall   f1-score    support"]
    for name, s in per.items():
        p, r, f = prf(s["tp"], s["pred"], s["gold"])
        lines.append(f"{name:>{width}}  {p:9.4f}  {r:9.4f}  {f:9.4f}  {round(s['gold'] * total):9d}")
    p, r, f = micro_prf(per)
    support = round(sum(s["gold"] for s in per.values()) * total)
    lines += ["", f"{'micro avg':>{width}}  {p:9.4f}  {r:9.4f}  {f:9.4f}  {support:9d}"]
    present = [s for s in per.values() if s["pred"] > 0 or s["gold"] > 0]
    if present:
        scores = [prf(s["tp"], s["pred"], s["gold"]) for s in present]
        mp, mr, mf = (sum(x[i] for x in scores) / len(scores) for i in range(3))
        lines.append(f"{'macro avg':>{width}}  {mp:9.4f}  {mr:9.4f}  {mf:9.4f}  {support:9d}")
    return "\n".join(lines) + "\n"


# -- classification -----------------------------------------------------------------------------
def label_counts(gold: Iterable[str], pred: Iterable[str]) -> tuple[Counter[str], Counter[str], Counter[str]]:
    tp: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    for g, p in zip(gold, pred, strict=True):
        n_gold[g] += 1
        n_pred[p] += 1
        if g == p:
            tp[g] += 1
    return tp, n_pred, n_gold


# -- NER (entity level, seqeval's default CoNLL scheme) -------------------------------------------
def entity_counts(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]
) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """True positives, predicted and gold entities per type, over sentences of BIO tags.

    Entities are the spans seqeval extracts (``get_entities``, the conlleval rules), so micro
    precision, recall and F1 from these counts equal seqeval's ``precision_score``, ``recall_score``
    and ``f1_score``."""
    from seqeval.metrics.sequence_labeling import get_entities

    tp: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    for g_tags, p_tags in zip(gold, pred, strict=True):
        g_set = set(get_entities(list(g_tags)))
        p_set = set(get_entities(list(p_tags)))
        for t, _, _ in g_set:
            n_gold[t] += 1
        for t, _, _ in p_set:
            n_pred[t] += 1
        for t, _, _ in g_set & p_set:
            tp[t] += 1
    return tp, n_pred, n_gold


def entity_types(tags: Iterable[str]) -> list[str]:
    """Entity types named by BIO tags, sorted (``B-person`` → ``person``)."""
    return sorted({t.split("-", 1)[1] for t in tags if "-" in t})


# -- SQuAD --------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def token_f1(prediction: str, truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(truth).split()
    if not pred_tokens or not gold_tokens:  # unanswerable: right only if both are empty
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    p, r = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * p * r / (p + r)


def squad_scores(prediction: str, truths: Sequence[str]) -> tuple[float, float]:
    """Exact match and F1 of one prediction: the best over the gold answers (no answer: ``[""]``)."""
    truths = list(truths) or [""]
    return max(exact_match(prediction, t) for t in truths), max(token_f1(prediction, t) for t in truths)
