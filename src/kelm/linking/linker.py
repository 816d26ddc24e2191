"""Entity linking: find knowledge-graph entities mentioned in text.

Two stages, both returning `Mention`s (character span, entity id, score, method):

1. **Dictionary** (``exact`` / ``alias``): text and names are normalised the same way (lower
   case, words of letters and digits, single spaces), names are entity labels (``exact``) and
   aliases (``alias``: the id with ``_`` as spaces, and any extra names from an ``aliases`` file,
   ``id<TAB>name<TAB>name...``). Every token n-gram is looked up, longest first, and a match is
   kept only if it overlaps no match already kept (so "nucleic acid" inside a longer name loses to
   the longer name).
2. **Nearest neighbours** (``nn``): the token n-grams left uncovered by stage 1 (those that
   neither start nor end with a stop word) are embedded by the text encoder (mean-pooled,
   L2-normalised) and compared by cosine with a precomputed index of the entities'
   ``"label: description"`` texts; the best spans above ``threshold`` are kept, best first,
   without overlaps.

`linking_accuracy` scores a linker against gold mentions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from kelm.errors import DataError
from kelm.kg.model import KnowledgeGraph

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "by",
        "with",
        "and",
        "or",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "as",
        "into",
        "than",
        "then",
        "there",
        "their",
        "which",
        "who",
        "whom",
        "what",
        "when",
        "where",
        "why",
        "how",
        "not",
        "no",
        "can",
        "may",
        "might",
        "will",
        "would",
        "about",
        "over",
        "under",
        "we",
        "our",
        "you",
        "your",
        "they",
        "them",
        "he",
        "she",
        "his",
        "her",
    ]
)
#: Texts the encoder embeds: (texts) -> (n, dim) float tensor (normalised by the caller).
Embedder = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class Mention:
    """A linked span ``text[start:end]``."""

    start: int
    end: int
    entity: str
    score: float
    method: str  # exact, alias or nn

    def overlaps(self, other: Mention) -> bool:
        return self.start < other.end and other.start < self.end


def tokens(text: str) -> list[tuple[str, int, int]]:
    """``(lower-cased word, start, end)`` for each word of letters and digits."""
    return [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(text)]


def normalize(text: str) -> str:
    """Case- and space-normalised form used for dictionary matching."""
    return " ".join(w for w, _, _ in tokens(text))


def read_aliases(path: str | Path) -> dict[str, list[str]]:
    """``id<TAB>alias<TAB>alias...`` lines (blank lines skipped)."""
    path = Path(path)
    out: dict[str, list[str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) < 2 or not parts[0]:
            raise DataError("expected id<TAB>alias[<TAB>alias...]", path, n)
        out.setdefault(parts[0], []).extend(p for p in parts[1:] if p)
    return out


def entity_texts(kg: KnowledgeGraph, ids: Sequence[str]) -> list[str]:
    """``"label: description"`` per entity (the label alone when there is no description)."""
    return [kg.entities[e].text() for e in ids]


def build_entity_index(kg: KnowledgeGraph, embed: Embedder, ids: Sequence[str] | None = None) -> EntityIndex:
    """An index of every entity's ``"label: description"`` text and, for entities with a description,
    of the label alone as a second row (a short mention is closer to a short name than to a long
    description, so the best of the two rows counts)."""
    ids = sorted(kg.entities) if ids is None else list(ids)
    rows, texts = list(ids), entity_texts(kg, ids)
    for e in ids:
        ent = kg.entities[e]
        if ent.description:
            rows.append(e)
            texts.append(ent.label or e)
    return EntityIndex.build(rows, texts, embed)


@dataclass
class EntityIndex:
    """L2-normalised text embeddings of entities, row ``i`` for ``ids[i]`` (an entity may have several rows)."""

    ids: list[str]
    vectors: torch.Tensor

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], embed: Embedder) -> EntityIndex:
        return cls(list(ids), F.normalize(embed(list(texts)).float(), dim=-1))

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        from kelm.atomic import atomic_path

        with atomic_path(Path(path)) as tmp:
            save_file({"vectors": self.vectors.contiguous()}, str(tmp), metadata={"ids": "\n".join(self.ids)})

    @classmethod
    def load(cls, path: str | Path) -> EntityIndex:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            ids = (fh.metadata() or {}).get("ids", "").split("\n")
            return cls(ids, fh.get_tensor("vectors"))

    def search(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Best cosine and row per (normalised) query."""
        scores, rows = (F.normalize(queries.float(), dim=-1) @ self.vectors.T).max(-1)
        return scores, rows


class EntityLinker:
    """Dictionary matching, then nearest neighbours in the encoder's space (when an index is given)."""

    def __init__(
        self,
        labels: dict[str, str],
        aliases: dict[str, Iterable[str]] | None = None,
        index: EntityIndex | None = None,
        embed: Embedder | None = None,
        threshold: float = 0.7,
        max_ngram: int | None = None,
    ):
        self.names: dict[str, tuple[str, str]] = {}  # normalised name -> (entity, method)
        for entity, names in (aliases or {}).items():
            for name in names:
                self.names.setdefault(normalize(name), (entity, "alias"))
        for entity, label in labels.items():  # labels win over aliases
            key = normalize(label)
            if key and self.names.get(key, ("", "alias"))[1] != "exact":
                self.names[key] = (entity, "exact")
        self.names.pop("", None)
        longest = max((len(k.split()) for k in self.names), default=1)
        self.max_ngram = max_ngram or longest
        self.index, self.embed, self.threshold = index, embed, threshold
        self._seen: dict[str, tuple[float, str]] = {}  # span text -> best cosine and entity

    @classmethod
    def from_kg(
        cls,
        kg: KnowledgeGraph,
        aliases: dict[str, Iterable[str]] | None = None,
        index: EntityIndex | None = None,
        embed: Embedder | None = None,
        threshold: float = 0.7,
    ) -> EntityLinker:
        """Labels from the graph (the id when there is none); ids with ``_`` as spaces are aliases."""
        labels = {e.id: e.label or e.id for e in kg.entities.values()}
        names: dict[str, list[str]] = {e: [e.replace("_", " ")] for e in kg.entities}
        for e, extra in (aliases or {}).items():
            if e in names:
                names[e] += list(extra)
        return cls(labels, names, index, embed, threshold)

    def link(self, text: str) -> list[Mention]:
        """Mentions in ``text``, sorted by position."""
        return self.link_many([text])[0]

    def link_many(self, texts: Sequence[str]) -> list[list[Mention]]:
        """Mentions per text; the nearest-neighbour stage embeds every new span of all texts in one
        pass and remembers each span's best entity (texts repeat spans a lot)."""
        words = [tokens(t) for t in texts]
        found = [self._dictionary(t, w) for t, w in zip(texts, words, strict=True)]
        if self.index is None or self.embed is None:
            return [sorted(f, key=lambda m: m.start) for f in found]
        spans = [self._free_spans(w, f) for w, f in zip(words, found, strict=True)]
        new = sorted({t[s:e] for t, sp in zip(texts, spans, strict=True) for s, e in sp} - self._seen.keys())
        if new:
            scores, rows = self.index.search(self.embed(new))
            self._seen |= {k: (float(v), self.index.ids[int(r)]) for k, v, r in zip(new, scores, rows, strict=True)}
        out = []
        for text, sp, kept in zip(texts, spans, found, strict=True):
            hits = [(self._seen[text[s:e]], s, e) for s, e in sp]
            nn_kept: list[Mention] = []
            for (score, entity), s, e in sorted(hits, key=lambda h: -h[0][0]):
                if score < self.threshold:
                    break
                m = Mention(s, e, entity, score, "nn")
                if not any(m.overlaps(o) for o in nn_kept):
                    nn_kept.append(m)
            out.append(sorted(kept + nn_kept, key=lambda m: m.start))
        return out

    def _dictionary(self, text: str, words: list[tuple[str, int, int]]) -> list[Mention]:
        kept: list[Mention] = []
        for n in range(min(self.max_ngram, len(words)), 0, -1):
            for i in range(len(words) - n + 1):
                hit = self.names.get(" ".join(w for w, _, _ in words[i : i + n]))
                if hit is None:
                    continue
                m = Mention(words[i][1], words[i + n - 1][2], hit[0], 1.0, hit[1])
                if not any(m.overlaps(k) for k in kept):
                    kept.append(m)
        return kept

    def _free_spans(self, words: list[tuple[str, int, int]], taken: list[Mention]) -> list[tuple[int, int]]:
        """Character spans of n-grams outside ``taken`` that neither start nor end with a stop word."""
        free = [not any(k.start < e and s < k.end for k in taken) for _, s, e in words]
        spans: list[tuple[int, int]] = []
        for i in range(len(words)):
            for n in range(1, self.max_ngram + 1):
                j = i + n - 1
                if j >= len(words) or not all(free[i : j + 1]):
                    break
                if words[i][0] in STOP_WORDS or words[j][0] in STOP_WORDS:
                    continue
                spans.append((words[i][1], words[j][2]))
        return spans


@dataclass(frozen=True)
class GoldMention:
    start: int
    end: int
    entity: str


def linking_accuracy(linker: EntityLinker, examples: Sequence[tuple[str, Sequence[GoldMention]]]) -> dict[str, float]:
    """How well ``linker`` finds gold mentions.

    ``accuracy``: share of gold mentions for which a predicted mention overlapping the gold span
    names the gold entity; ``precision``: share of predicted mentions that overlap a gold span with
    the same entity; ``f1`` of the two; ``accuracy_<method>`` per method of the matching
    prediction (over all gold mentions), and ``gold`` / ``predicted`` counts."""
    gold_n = pred_n = hit = pred_ok = 0
    by_method: dict[str, int] = {}
    for text, gold in examples:
        pred = linker.link(text)
        gold_n += len(gold)
        pred_n += len(pred)
        for g in gold:
            match = next((p for p in pred if p.entity == g.entity and p.start < g.end and g.start < p.end), None)
            if match is not None:
                hit += 1
                by_method[match.method] = by_method.get(match.method, 0) + 1
        pred_ok += sum(any(p.entity == g.entity and p.start < g.end and g.start < p.end for g in gold) for p in pred)
    acc = hit / gold_n if gold_n else 0.0
    prec = pred_ok / pred_n if pred_n else 0.0
    out = {"accuracy": acc, "precision": prec, "f1": 2 * acc * prec / (acc + prec) if acc + prec else 0.0}
    out |= {f"accuracy_{m}": c / gold_n for m, c in sorted(by_method.items())} if gold_n else {}
    return out | {"gold": float(gold_n), "predicted": float(pred_n)}


__all__ = [
    "EntityIndex",
    "EntityLinker",
    "build_entity_index",
    "GoldMention",
    "Mention",
    "entity_texts",
    "linking_accuracy",
    "normalize",
    "read_aliases",
    "tokens",
]
