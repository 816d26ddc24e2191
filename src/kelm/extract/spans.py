"""Candidate spans of a batch of sentences, and their max-pooled representations.

Spans are word ranges of 1..``max_width`` words. For a batch whose longest sentence has ``N``
words, spans are laid out width by width: all spans of width 1 (starts ``0..N-1``), then width 2
(starts ``0..N-2``), and so on, so a span's flat index is ``offset(width) + start``. Span vectors
are element-wise maxima over their words, built width by width from the previous width's maxima
(``W`` passes over ``(B, N, H)``, never a ``(spans, words, H)`` mask).
"""

from __future__ import annotations

import torch
from torch import Tensor


def width_offsets(n_words: int, max_width: int) -> list[int]:
    """Flat index of the first span of each width 1..max_width (and the total, last)."""
    offsets = [0]
    for w in range(1, max_width + 1):
        offsets.append(offsets[-1] + max(n_words - w + 1, 0))
    return offsets


def span_index(start: int, end: int, n_words: int, max_width: int) -> int | None:
    """Flat index of the word span ``[start, end)``; None if it is wider than ``max_width``."""
    w = end - start
    if w < 1 or w > max_width or end > n_words:
        return None
    return width_offsets(n_words, max_width)[w - 1] + start


def span_bounds(n_words: int, max_width: int) -> tuple[Tensor, Tensor]:
    """``(starts, ends)`` (end exclusive) of every flat span index, for ``n_words`` words."""
    starts, ends = [], []
    for w in range(1, max_width + 1):
        s = torch.arange(max(n_words - w + 1, 0))
        starts.append(s)
        ends.append(s + w)
    return torch.cat(starts), torch.cat(ends)


def span_maxima(words_BNH: Tensor, max_width: int) -> Tensor:
    """``(B, S, H)``: each span's element-wise maximum over its words, in the flat span order."""
    out, cur = [], None
    n = words_BNH.shape[1]
    for w in range(1, min(max_width, n) + 1):
        nxt = words_BNH[:, w - 1 :]
        cur = nxt if cur is None else torch.maximum(cur[:, :-1], nxt)
        out.append(cur)
    return torch.cat(out, dim=1)


def word_maxima(tokens_BTH: Tensor, word_of_token_BT: Tensor, n_words: int) -> Tensor:
    """``(B, N, H)``: each word's maximum over its sub-word vectors (``word_of_token`` is -1 for
    special and padding tokens); a word cut off by truncation gets zeros."""
    B, T, H = tokens_BTH.shape
    index = word_of_token_BT.clamp(min=0) + (word_of_token_BT < 0) * n_words  # specials → a spare slot
    out = tokens_BTH.new_zeros(B, n_words + 1, H)
    out = out.scatter_reduce(1, index[..., None].expand(B, T, H), tokens_BTH, "amax", include_self=False)
    return out[:, :n_words]


def between_maxima(words_BNH: Tensor, b: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``(P, H)``: the maximum over words ``lo..hi-1`` of sentence ``b`` for each pair; zeros where
    the range is empty (adjacent or overlapping spans).

    A sparse table of maxima over windows of 1, 2, 4, … words answers each range with two lookups
    (the two windows of the largest power of two that cover it from either end), so memory is
    ``log2(N)`` copies of the words, not ``(pairs, words, H)``."""
    n = words_BNH.shape[1]
    levels = [words_BNH]
    while 2 ** len(levels) <= n:
        half = 2 ** (len(levels) - 1)
        prev = levels[-1]
        levels.append(torch.maximum(prev[:, :-half], prev[:, half:]))
    length = (hi - lo).clamp(min=1)
    k = torch.floor(torch.log2(length.double())).long()
    out = words_BNH.new_zeros(len(b), words_BNH.shape[2])
    for level in range(len(levels)):
        sel = torch.nonzero(k == level).flatten()
        if len(sel) == 0:
            continue
        table = levels[level]
        first = table[b[sel], lo[sel].clamp(max=table.shape[1] - 1)]
        last = table[b[sel], (hi[sel] - 2**level).clamp(min=0, max=table.shape[1] - 1)]
        out = out.index_put((sel,), torch.maximum(first, last))
    return torch.where((hi > lo)[:, None], out, torch.zeros_like(out))


__all__ = ["between_maxima", "span_bounds", "span_index", "span_maxima", "width_offsets", "word_maxima"]
