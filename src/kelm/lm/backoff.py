"""A back-off n-gram model as a trie of sorted integer keys, scored with numpy.

Order ``k`` holds its n-grams sorted by ``key = prefix_index * V + last_word``, where ``prefix_index``
is the row of the (k-1)-gram prefix in order ``k-1`` (order 1 is the vocabulary itself, row = word
id). Looking up a batch of n-grams is one ``searchsorted`` per order, so scoring is vectorised.
Probabilities and back-off weights are log10, as in ARPA files; scoring is standard ARPA back-off,
which is exactly how KenLM queries a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
NO_PROB = -99.0  # log10 probability written for <s>, which is never predicted


def pack_sentences(ids: np.ndarray, n_words: np.ndarray, bos: int, eos: int) -> tuple[np.ndarray, ...]:
    """Concatenate sentences as ``<s> w1 .. wn </s>``.

    Returns the id stream, each token's position in its sentence, and the tokens left in its sentence
    from that token on (itself included).
    """
    lengths = n_words + 2
    total = int(lengths.sum())
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    stream = np.empty(total, dtype=np.int64)
    inner = np.ones(total, dtype=bool)
    inner[starts] = False
    inner[starts + lengths - 1] = False
    stream[starts] = bos
    stream[starts + lengths - 1] = eos
    stream[inner] = ids
    pos = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    remaining = np.repeat(lengths, lengths) - pos
    return stream, pos, remaining


@dataclass
class OrderTable:
    """The n-grams of one order: sorted keys, log10 probabilities, log10 back-off weights (0 = none)."""

    keys: np.ndarray
    log10_prob: np.ndarray
    log10_bow: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class ScoreReport:
    """Corpus-level score: ``perplexity = 10 ** (-log10_prob / words)``; words include ``</s>``, not ``<s>``."""

    log10_prob: float
    words: int
    sentences: int
    oov: int
    log10_prob_oov: float = 0.0

    @property
    def perplexity(self) -> float:
        return float(10.0 ** (-self.log10_prob / max(self.words, 1)))

    @property
    def perplexity_without_oov(self) -> float:
        """Perplexity over in-vocabulary words only (OOV words and their probabilities left out)."""
        n = self.words - self.oov
        return float(10.0 ** (-(self.log10_prob - self.log10_prob_oov) / max(n, 1)))

    def as_dict(self) -> dict[str, float | int]:
        return {
            "perplexity": self.perplexity,
            "perplexity_without_oov": self.perplexity_without_oov,
            "log10_prob": self.log10_prob,
            "words": self.words,
            "sentences": self.sentences,
            "oov": self.oov,
        }


@dataclass
class NgramLM:
    """A back-off n-gram language model: vocabulary plus one `OrderTable` per order."""

    vocab: list[str]
    tables: list[OrderTable]
    lowercase: bool = False
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.vocab)}
        for special in (UNK, BOS, EOS):
            if special not in self.index:
                raise ValueError(f"vocabulary lacks {special}")
        self.unk, self.bos, self.eos = self.index[UNK], self.index[BOS], self.index[EOS]

    @property
    def order(self) -> int:
        return len(self.tables)

    def counts(self) -> list[int]:
        """Number of n-grams per order."""
        return [len(t) for t in self.tables]

    def lookup(self, k: int, prefix: np.ndarray, word: np.ndarray) -> np.ndarray:
        """Row of each k-gram ``prefix + word`` in order ``k`` (``prefix`` a row of order k-1), or -1."""
        keys = self.tables[k - 1].keys
        if len(keys) == 0:
            return np.full(len(prefix), -1, dtype=np.int64)
        query = prefix.astype(np.int64) * len(self.vocab) + word
        pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        ok = (prefix >= 0) & (word >= 0) & (keys[pos] == query)
        return np.where(ok, pos, -1)

    def encode(self, words: Sequence[str]) -> np.ndarray:
        """Word ids; out-of-vocabulary words map to ``<unk>``."""
        get, unk = self.index.get, self.unk
        if self.lowercase:
            return np.fromiter((get(w.lower(), unk) for w in words), dtype=np.int64, count=len(words))
        return np.fromiter((get(w, unk) for w in words), dtype=np.int64, count=len(words))

    def log10_windows(self, windows: np.ndarray) -> np.ndarray:
        """log10 p(last column | other columns) for each row of ``windows`` (word ids, -1 = no word).

        Columns are the ``order - 1`` history words (oldest first, left-padded with -1) then the word.
        """
        windows = np.asarray(windows, dtype=np.int64)
        n_rows, width = windows.shape
        last = width - 1
        # ends[k][c]: row of the k-gram ending at column c (columns c-k+1..c), or -1
        ends: list[list[np.ndarray | None]] = [[None] * width for _ in range(width + 1)]
        for c in range(width):
            ends[1][c] = windows[:, c]
        for k in range(2, width + 1):
            for c in range(k - 1, width):
                ends[k][c] = self.lookup(k, ends[k - 1][c - 1], windows[:, c])
        out = np.zeros(n_rows)
        found = np.zeros(n_rows, dtype=bool)
        for k in range(width, 0, -1):
            rows = ends[k][last]
            hit = (rows >= 0) & ~found
            out[hit] += self.tables[k - 1].log10_prob[rows[hit]]
            found |= hit
            if k > 1:  # back off from the context of length k-1 where the k-gram is missing
                ctx = ends[k - 1][last - 1]
                back = ~found & (ctx >= 0)
                out[back] += self.tables[k - 2].log10_bow[ctx[back]]
        return out

    def sentence_windows(self, sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Scoring windows for every word and ``</s>`` of each sentence, and the predicted word ids."""
        n_words = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
        stream, pos, _ = pack_sentences(self.encode([w for s in sentences for w in s]), n_words, self.bos, self.eos)
        targets = np.flatnonzero(pos > 0)
        cols = []
        for offset in range(self.order - 1, -1, -1):
            ok = pos[targets] >= offset
            col = np.full(len(targets), -1, dtype=np.int64)
            col[ok] = stream[targets[ok] - offset]
            cols.append(col)
        return np.stack(cols, axis=1), stream[targets]

    def score_sentences(self, sentences: Sequence[Sequence[str]]) -> ScoreReport:
        """Score tokenised sentences (``<s>``/``</s>`` added here); OOV words score as ``<unk>``."""
        if not sentences:
            return ScoreReport(0.0, 0, 0, 0)
        windows, targets = self.sentence_windows(sentences)
        lp = self.log10_windows(windows)
        oov = (targets == self.unk) & np.fromiter(
            (w != UNK for s in sentences for w in [*s, EOS]), dtype=bool, count=len(targets)
        )
        return ScoreReport(
            log10_prob=float(lp.sum()),
            words=len(targets),
            sentences=len(sentences),
            oov=int(oov.sum()),
            log10_prob_oov=float(lp[oov].sum()),
        )

    def perplexity(self, sentences: Sequence[Sequence[str]]) -> float:
        return self.score_sentences(sentences).perplexity

    def predictable(self) -> np.ndarray:
        """Ids of the words a distribution ranges over: the vocabulary except ``<s>``."""
        return np.flatnonzero(np.arange(len(self.vocab)) != self.bos)

    def ngram_words(self, k: int) -> np.ndarray:
        """Word ids of every k-gram in table order, shape ``(n_k, k)``."""
        v = len(self.vocab)
        keys = self.tables[k - 1].keys
        if k == 1:
            return keys.reshape(-1, 1)
        prefix = self.ngram_words(k - 1)[keys // v]
        return np.concatenate([prefix, (keys % v).reshape(-1, 1)], axis=1)
