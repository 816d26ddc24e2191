"""A trained extractor, loaded from its model folder, run over plain text.

``Extractor.from_pretrained(folder).extract(text)`` splits the text into sentences and words
(`kelm.extract.text`), cuts a sentence longer than the encoder's window into overlapping windows
of words (mentions are kept from the window where they sit farthest from a cut), and returns each
mention and relation with its character span in the text.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kelm.artifacts import read_model_spec
from kelm.atomic import write_text_atomic
from kelm.errors import DataError
from kelm.extract.decoding import Mention, Relation, decode_batch
from kelm.extract.inputs import collate_inputs, encode_sentence
from kelm.extract.model import ExtractorSettings, SpanRelationExtractor
from kelm.extract.text import Piece, sentences, words

SETTINGS_FILE = "extractor.json"


@dataclass(frozen=True, slots=True)
class TextMention:
    """A mention found in text: its surface string, type, score and character span."""

    text: str
    type: str
    start: int
    end: int
    score: float
    sentence: int


@dataclass(frozen=True, slots=True)
class TextRelation:
    """A relation between two mentions of one sentence of the text."""

    head: TextMention
    tail: TextMention
    type: str
    score: float


@dataclass(frozen=True, slots=True)
class Extraction:
    """What one text yields: its sentences, mentions and relations."""

    sentences: list[Piece]
    mentions: list[TextMention]
    relations: list[TextRelation]


class Extractor:
    """Mentions and relations in text, from a model trained by the ``extraction`` task."""

    def __init__(self, model: SpanRelationExtractor, tokenizer: Any, threshold: float, max_length: int):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.threshold, self.max_length = threshold, max_length
        self.settings = model.settings
        self.name = ""
        #: Sub-words per window of a long sentence: near the length of training sentences, where
        #: the model has learnt what context looks like.
        self.window_tokens = 128

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Extractor:
        """Load a run folder or its ``model/`` folder (no training data needed)."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from kelm.lm.hf import quiet
        from kelm.train.export import load_weights

        folder, _ = read_model_spec(path, "extractor")
        settings, threshold, max_length = read_settings(folder)
        with quiet():
            tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(str(folder)))
        model = load_weights(SpanRelationExtractor(encoder, settings), folder)
        out = cls(model, tokenizer, threshold, max_length)
        out.name = str(folder)
        return out

    # -- words to mentions and relations ----------------------------------------------------------
    @torch.no_grad()
    def predict_words(
        self, word_lists: list[list[str]], batch_size: int = 16, threshold: float | None = None
    ) -> list[tuple[list[Mention], list[Relation]]]:
        """Mentions and relations (word offsets) of each list of words; relations scoring at least
        ``threshold`` (default: the extractor's own)."""
        threshold = self.threshold if threshold is None else threshold
        out: list[tuple[list[Mention], list[Relation]]] = []
        s = self.settings
        for lo in range(0, len(word_lists), batch_size):
            chunk = word_lists[lo : lo + batch_size]
            samples = [encode_sentence(self.tokenizer, ws, self.max_length)[0] for ws in chunk]
            enc, logits = self.model("spans", **collate_inputs(samples, self.tokenizer.pad_token_id))
            types = (s.entity_types, s.relation_types)
            out += decode_batch(self.model, enc, logits, [len(ws) for ws in chunk], types, threshold)
        return out

    def windows(self, n_words: int, word_tokens: list[int]) -> list[tuple[int, int]]:
        """Word windows ``[lo, hi)`` that fit the encoder, overlapping by half a window."""
        budget = min(self.max_length, self.window_tokens) - 2
        spans, lo = [], 0
        while True:
            hi, used = lo, 0
            while hi < n_words and used + word_tokens[hi] <= budget:
                used += word_tokens[hi]
                hi += 1
            hi = max(hi, lo + 1)
            spans.append((lo, hi))
            if hi >= n_words:
                return spans
            lo = max(lo + 1, lo + (hi - lo) // 2)

    # -- text -------------------------------------------------------------------------------------
    def extract(self, text: str, batch_size: int = 16, threshold: float | None = None) -> Extraction:
        """Mentions and relations of ``text``, with character spans; relations scoring at least
        ``threshold`` (default: the extractor's own)."""
        sents = sentences(text)
        jobs: list[tuple[int, int, int, list[Piece]]] = []  # (sentence, lo, hi, words of the window)
        sent_words = [words(s) for s in sents]
        for k, ws in enumerate(sent_words):
            if not ws:
                continue
            lengths = [max(len(self.tokenizer.tokenize(w.text)), 1) for w in ws]
            for lo, hi in self.windows(len(ws), lengths):
                jobs.append((k, lo, hi, ws[lo:hi]))
        results = self.predict_words([[w.text for w in job[3]] for job in jobs], batch_size, threshold)
        best: dict[tuple[int, int, int], tuple[int, TextMention]] = {}  # (sentence, start, end) → margin, mention
        rels: dict[tuple, TextRelation] = {}
        for (k, lo, hi, ws), (mentions, relations) in zip(jobs, results, strict=True):
            local: dict[tuple[int, int, str], TextMention] = {}
            for m in mentions:
                tm = TextMention(
                    text[ws[m.start].start : ws[m.end - 1].end],
                    m.type,
                    ws[m.start].start,
                    ws[m.end - 1].end,
                    m.score,
                    k,
                )
                far = 1 << 30  # a side without a cut is as far from one as can be
                margin = min(m.start if lo > 0 else far, (hi - lo - m.end) if hi < len(sent_words[k]) else far)
                key = (k, lo + m.start, lo + m.end)
                if key not in best or margin > best[key][0]:
                    best[key] = (margin, tm)
                local[m.key()] = tm
            for r in relations:
                h, t = local[r.head.key()], local[r.tail.key()]
                rkey = (h.start, h.end, t.start, t.end, r.type)
                if rkey not in rels or r.score > rels[rkey].score:
                    rels[rkey] = TextRelation(h, t, r.type, r.score)
        mentions = _non_overlapping([m for _, m in best.values()])
        kept = {(m.start, m.end, m.type) for m in mentions}
        relations = [r for r in rels.values() if _at(r.head) in kept and _at(r.tail) in kept]
        relations.sort(key=lambda r: (r.head.start, r.tail.start, r.type))
        return Extraction(sents, mentions, relations)


def _at(m: TextMention) -> tuple[int, int, str]:
    return (m.start, m.end, m.type)


def write_settings(folder: Path, settings: ExtractorSettings, threshold: float, max_length: int) -> None:
    """The head's shape, the relation threshold and the encoder's window, beside the weights."""
    raw = dataclasses.asdict(settings) | {"relation_threshold": threshold, "max_length": max_length}
    write_text_atomic(folder / SETTINGS_FILE, json.dumps(raw, indent=1))


def read_settings(folder: Path) -> tuple[ExtractorSettings, float, int]:
    """What `write_settings` wrote: settings, relation threshold, maximum length."""
    path = folder / SETTINGS_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        threshold, max_length = float(raw.pop("relation_threshold")), int(raw.pop("max_length"))
        for key in ("entity_types", "relation_types"):
            raw[key] = tuple(raw[key])
        return ExtractorSettings(**raw), threshold, max_length
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"cannot read the extractor settings ({err})", path) from None


def _non_overlapping(mentions: list[TextMention]) -> list[TextMention]:
    """Mentions from overlapping windows that disagree on a span: the higher score wins."""
    out: list[TextMention] = []
    for m in sorted(mentions, key=lambda m: -m.score):
        if all(m.end <= o.start or o.end <= m.start for o in out):
            out.append(m)
    return sorted(out, key=lambda m: (m.start, m.end))


__all__ = ["Extraction", "Extractor", "TextMention", "TextRelation", "read_settings", "write_settings"]
