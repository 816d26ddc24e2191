"""Interpolated modified Kneser-Ney n-gram language models (Chen & Goodman), with KenLM ``lmplz``'s conventions.

- Sentences are ``<s> w1 .. wn </s>``. The highest order uses raw counts; lower orders use
  continuation counts N1+(• g), except n-grams that begin with ``<s>`` (nothing can precede them),
  which keep their raw counts.
- Each order k has three discounts D1, D2, D3+ from its count-of-counts t1..t4:
  ``Y = t1 / (t1 + 2 t2)``, ``Dj = j - (j + 1) Y t(j+1) / tj``. When a count-of-count is zero or a
  discount falls outside (0, j] (tiny or artificial data), KenLM's fallback 0.5, 1, 1.5 is used.
- ``p(w|h) = (a(hw) - D(a(hw))) / A(h) + gamma(h) p(w|h')`` with ``A(h) = sum_w a(hw)`` and
  ``gamma(h) = (D1 N1(h•) + D2 N2(h•) + D3+ N3+(h•)) / A(h)``. Unigrams interpolate with the
  uniform distribution over the vocabulary without ``<s>`` (``<unk>`` included), so ``<unk>``
  gets ``gamma(empty) / |V|`` like any word never seen (``lmplz``'s default too).
- The result is stored the ARPA way: each n-gram's full interpolated probability and, for each
  context h, the back-off weight gamma(h). Standard back-off then reproduces the interpolated model
  exactly, for any word in any context.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from kelm.errors import ConfigError, DataError
from kelm.lm.backoff import BOS, EOS, NO_PROB, UNK, NgramLM, OrderTable, pack_sentences

MAX_ORDER = 5
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)


def check_order(order: int) -> int:
    """The n-gram order, validated (1..5)."""
    if not isinstance(order, int) or isinstance(order, bool) or not 1 <= order <= MAX_ORDER:
        raise ConfigError(f"order: must be an integer from 1 to {MAX_ORDER}, got {order!r}")
    return order


def read_sentences(paths: Iterable[str | Path], lowercase: bool = False) -> list[list[str]]:
    """Sentences of plain-text files: one per line, split on whitespace; blank lines are skipped.

    Raises `DataError` naming the file for a missing, unreadable, non-UTF-8 or empty file, and the
    line for the reserved tokens ``<s>`` and ``</s>``.
    """
    sentences: list[list[str]] = []
    for path in paths:
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DataError("no such file", path) from None
        except OSError as err:
            raise DataError(f"cannot read: {err.strerror or err}", path) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise DataError("not valid UTF-8", path, line) from None
        if lowercase:
            text = text.lower()
        before = len(sentences)
        for number, line in enumerate(text.splitlines(), start=1):
            words = line.split()
            if not words:
                continue
            if BOS in words or EOS in words:
                raise DataError(f"{BOS} and {EOS} are reserved (sentence boundaries are added for you)", path, number)
            sentences.append(words)
        if len(sentences) == before:
            raise DataError("empty file: no sentences", path)
    return sentences


def modified_kn_discounts(counts: np.ndarray) -> tuple[float, float, float]:
    """D1, D2, D3+ from the (adjusted) counts of one order; KenLM's fallback when they are undefined."""
    t = [int(np.count_nonzero(counts == j)) for j in range(1, 5)]
    if min(t[:3]) == 0:
        return FALLBACK_DISCOUNTS
    y = t[0] / (t[0] + 2.0 * t[1])
    d = tuple(j - (j + 1) * y * t[j] / t[j - 1] for j in range(1, 4))
    if any(not 0.0 < dj <= j for j, dj in enumerate(d, start=1)):
        return FALLBACK_DISCOUNTS
    return d  # type: ignore[return-value]


def _discount(counts: np.ndarray, d: Sequence[float]) -> np.ndarray:
    """The discount each count gets: 0 for 0, D1 for 1, D2 for 2, D3+ for 3 or more."""
    return np.select([counts == 1, counts == 2, counts >= 3], list(d), 0.0)


def _count(stream: np.ndarray, remaining: np.ndarray, order: int, v: int) -> list[dict[str, np.ndarray]]:
    """Unique n-grams of each order with raw counts, trie keys and one start position each."""
    levels: list[dict[str, np.ndarray]] = []
    rows = stream.copy()  # row of the 1-gram starting at each position (= word id)
    levels.append({"keys": np.arange(v, dtype=np.int64), "raw": np.bincount(stream, minlength=v), "rows": rows})
    levels[0]["first"] = np.full(v, -1, dtype=np.int64)
    first_seen = np.unique(stream, return_index=True)
    levels[0]["first"][first_seen[0]] = first_seen[1]
    for k in range(2, order + 1):
        starts = np.flatnonzero(remaining >= k)
        keys = rows[starts] * v + stream[starts + k - 1]
        uniq, first, inverse, raw = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
        rows = np.full(len(stream), -1, dtype=np.int64)
        rows[starts] = inverse
        levels.append({"keys": uniq, "raw": raw, "rows": rows, "first": starts[first]})
    return levels


def train_kneser_ney(sentences: Sequence[Sequence[str]], order: int = 3, lowercase: bool = False) -> NgramLM:
    """Estimate an interpolated modified Kneser-Ney model from tokenised sentences.

    ``lowercase`` only records how the text was normalised (`read_sentences` applies it), so that
    scoring normalises the same way.
    """
    check_order(order)
    if not sentences:
        raise DataError("no sentences to train on")
    words = dict.fromkeys(itertools.chain((UNK, BOS, EOS), itertools.chain.from_iterable(sentences)))
    vocab = list(words)
    index = {w: i for i, w in enumerate(vocab)}
    v = len(vocab)
    bos = index[BOS]
    ids = np.fromiter((index[w] for s in sentences for w in s), dtype=np.int64)
    n_words = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
    stream, _, remaining = pack_sentences(ids, n_words, bos, index[EOS])
    levels = _count(stream, remaining, order, v)

    # adjusted counts: raw at the top order and for n-grams starting with <s>, else continuation counts
    adjusted: list[np.ndarray] = []
    for k, level in enumerate(levels, start=1):
        a = level["raw"].astype(np.int64)
        if k < order:
            cont = np.bincount(level["rows"][levels[k]["first"] + 1], minlength=len(a))  # rows of (k+1)-gram suffixes
            starts_bos = np.zeros(len(a), dtype=bool)
            seen = level["first"] >= 0
            starts_bos[seen] = stream[level["first"][seen]] == bos
            a = np.where(starts_bos, a, cont)
        if k == 1:
            a[bos] = 0  # <s> is never predicted
        adjusted.append(a)

    discounts = [modified_kn_discounts(a[a > 0]) for a in adjusted]
    tables: list[OrderTable] = []
    prob_prev = np.zeros(0)
    for k in range(1, order + 1):
        level, a, d = levels[k - 1], adjusted[k - 1], discounts[k - 1]
        n_ctx = 1 if k == 1 else len(levels[k - 2]["keys"])
        ctx = np.zeros(len(a), dtype=np.int64) if k == 1 else level["keys"] // v
        disc = _discount(a, d)
        total = np.bincount(ctx, weights=a, minlength=n_ctx).astype(np.float64)
        gamma = np.bincount(ctx, weights=disc, minlength=n_ctx).astype(np.float64)
        np.divide(gamma, total, out=gamma, where=total > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            prob = (a - disc) / total[ctx]
        if k == 1:
            prob = prob + gamma[0] / (v - 1)
            prob[bos] = 0.0
        else:
            suffix = levels[k - 2]["rows"][level["first"] + 1]
            prob = prob + gamma[ctx] * prob_prev[suffix]
            tables[-1].log10_bow[total > 0] = np.log10(gamma[total > 0])
        with np.errstate(divide="ignore"):
            log_prob = np.where(prob > 0, np.log10(np.maximum(prob, 1e-300)), NO_PROB)
        tables.append(OrderTable(level["keys"], log_prob, np.zeros(len(a))))
        prob_prev = prob

    meta = {
        "smoothing": "interpolated modified Kneser-Ney",
        "lowercase": str(lowercase).lower(),
        **{f"discounts.{k}": ",".join(f"{x:.6f}" for x in d) for k, d in enumerate(discounts, start=1)},
    }
    return NgramLM(vocab, tables, lowercase=lowercase, meta=meta)
