"""Plain text to sentences and words, every piece with its character offsets in the document.

Rule-based and language-light: a sentence ends at ``.``, ``!`` or ``?`` (with closing quotes or
brackets) followed by white space and an upper-case letter, a digit or an opening quote, unless
the word before the stop is a known abbreviation or a single capital (an initial); blank lines
always end a sentence. Words are runs of letters and digits (with inner ``.``, ``'``, ``-`` and
``&``, so ``U.S.``, ``O'Neil`` and ``AT&T`` stay whole) or single other symbols, as in CoNLL04's
tokenisation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"\w+(?:[.'’&-]\w+)*\.?(?<=[A-Z]\.)|\w+(?:[.'’&-]\w+)*|[^\w\s]", re.UNICODE)
_STOP = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9])|\n\s*\n")
_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "gen",
        "gov",
        "sen",
        "rep",
        "col",
        "lt",
        "sgt",
        "capt",
        "corp",
        "inc",
        "ltd",
        "co",
        "vs",
        "etc",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "no",
        "fig",
        "e.g",
        "i.e",
        "u.s",
        "u.k",
        "u.n",
    ]
)


@dataclass(frozen=True, slots=True)
class Piece:
    """Text with its ``[start, end)`` character offsets in the document."""

    text: str
    start: int
    end: int


def sentences(text: str) -> list[Piece]:
    """The document's sentences, stripped, with offsets (empty ones left out)."""
    out, begin = [], 0
    for m in _STOP.finditer(text):
        if m.group().strip() and _abbreviation_before(text, m.start()):
            continue
        _add(out, text, begin, m.end())
        begin = m.end()
    _add(out, text, begin, len(text))
    return out


def words(sentence: Piece) -> list[Piece]:
    """The words of a sentence, with document offsets."""
    return [
        Piece(m.group(), sentence.start + m.start(), sentence.start + m.end()) for m in _WORD.finditer(sentence.text)
    ]


def _abbreviation_before(text: str, stop: int) -> bool:
    word = re.search(r"([\w.]+)$", text[max(0, stop - 12) : stop])
    if word is None:
        return False
    w = word.group(1).lower().rstrip(".")
    return w in _ABBREVIATIONS or (len(w) == 1 and w.isalpha())


def _add(out: list[Piece], text: str, lo: int, hi: int) -> None:
    chunk = text[lo:hi]
    stripped = chunk.strip()
    if stripped:
        start = lo + chunk.index(stripped)
        out.append(Piece(stripped, start, start + len(stripped)))


__all__ = ["Piece", "sentences", "words"]
