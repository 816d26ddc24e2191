"""From logits to mentions and relations, and the strict counts they are scored by.

A mention is a word span with a type; spans whose best class is an entity type are taken in
order of confidence, skipping any that overlaps one already taken (CoNLL04-style flat entities).
A relation is an ordered pair of mentions with a type whose probability reaches the threshold.
Strict scoring: a mention is right when its span and type are; a relation when both mentions'
spans and types and its own type are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True, slots=True)
class Mention:
    """An entity mention: words ``[start, end)`` of a sentence, its type and confidence."""

    start: int
    end: int
    type: str
    score: float = 1.0

    def key(self) -> tuple[int, int, str]:
        return (self.start, self.end, self.type)


@dataclass(frozen=True, slots=True)
class Relation:
    """A directed relation between two mentions of one sentence."""

    head: Mention
    tail: Mention
    type: str
    score: float = 1.0

    def key(self) -> tuple[tuple[int, int, str], tuple[int, int, str], str]:
        return (self.head.key(), self.tail.key(), self.type)


def decode_mentions(
    logits_SC: Tensor, starts_S: Tensor, ends_S: Tensor, n_words: int, types: Sequence[str]
) -> tuple[list[Mention], list[int]]:
    """Non-overlapping mentions of one sentence and their flat span indices."""
    probs = logits_SC.float().softmax(-1)
    score, best = probs.max(-1)
    keep = (best > 0) & (ends_S <= n_words)
    order = torch.nonzero(keep).flatten()
    order = order[score[order].argsort(descending=True)].tolist()
    taken = [False] * n_words
    mentions: list[tuple[Mention, int]] = []
    for k in order:
        s, e = int(starts_S[k]), int(ends_S[k])
        if any(taken[s:e]):
            continue
        taken[s:e] = [True] * (e - s)
        mentions.append((Mention(s, e, types[int(best[k]) - 1], float(score[k])), k))
    mentions.sort(key=lambda m: (m[0].start, m[0].end))
    return [m for m, _ in mentions], [k for _, k in mentions]


def ordered_pairs(n: int) -> list[tuple[int, int]]:
    """Every ordered pair of distinct positions ``0..n-1``."""
    return [(i, j) for i in range(n) for j in range(n) if i != j]


def decode_relations(
    probs_PR: Tensor, pairs: Sequence[tuple[Mention, Mention]], types: Sequence[str], threshold: float
) -> list[Relation]:
    """Relations whose probability reaches ``threshold`` (several types per pair may)."""
    out = []
    for p, r in torch.nonzero(probs_PR >= threshold).tolist():
        head, tail = pairs[p]
        out.append(Relation(head, tail, types[r], float(probs_PR[p, r])))
    return out


@torch.no_grad()
def decode_batch(
    model: Any,
    enc: Any,
    entity_logits_BSC: Tensor,
    n_words: Sequence[int],
    types: tuple[Sequence[str], Sequence[str]],
    threshold: float,
) -> list[tuple[list[Mention], list[Relation]]]:
    """Mentions and relations of each sentence of an encoded batch: mentions from the entity
    logits, then one relation pass (``model("relations", ...)``) over every ordered pair of them."""
    entity_types, relation_types = types
    found = [
        decode_mentions(entity_logits_BSC[b], enc.starts_S, enc.ends_S, n, entity_types) for b, n in enumerate(n_words)
    ]
    pairs = [(b, flat[i], flat[j]) for b, (_, flat) in enumerate(found) for i, j in ordered_pairs(len(flat))]
    probs = model("relations", encoded=enc, pairs=torch.tensor(pairs, dtype=torch.long).view(-1, 3)).sigmoid()
    out, p = [], 0
    for mentions, _ in found:
        mpairs = [(mentions[i], mentions[j]) for i, j in ordered_pairs(len(mentions))]
        out.append((mentions, decode_relations(probs[p : p + len(mpairs)], mpairs, relation_types, threshold)))
        p += len(mpairs)
    return out


def strict_counts(
    gold: Iterable[Iterable[tuple]], pred: Iterable[Iterable[tuple]], type_of: int = -1
) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """True positives, predictions and gold items per type, over sentences of item keys (a key's
    type is its element ``type_of``)."""
    tp: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    for g, p in zip(gold, pred, strict=True):
        gs, ps = set(g), set(p)
        for key in gs:
            n_gold[key[type_of]] += 1
        for key in ps:
            n_pred[key[type_of]] += 1
            if key in gs:
                tp[key[type_of]] += 1
    return tp, n_pred, n_gold


__all__ = [
    "Mention",
    "Relation",
    "decode_batch",
    "decode_mentions",
    "decode_relations",
    "ordered_pairs",
    "strict_counts",
]
