"""A span-based joint entity and relation extractor on a Hugging Face encoder.

The design follows span-based extraction (Eberts and Ulges, SpERT, 2020): every word span of up
to ``max_width`` words is a candidate entity, classified from the maximum of its words' vectors,
a learnt embedding of its width and the sentence's ``[CLS]`` vector; every ordered pair of
entities is a candidate relation, classified (one sigmoid per relation type) from both spans, their
widths and the maximum over the words between them. Words are the maxima of their sub-words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kelm.extract.inputs import SHAPES
from kelm.extract.spans import between_maxima, span_bounds, span_maxima, word_maxima


@dataclass(frozen=True)
class ExtractorSettings:
    """The head's shape: label sets and span limits (saved with the model)."""

    entity_types: tuple[str, ...]
    relation_types: tuple[str, ...]
    max_width: int = 10
    width_dim: int = 25
    dropout: float = 0.1
    #: Also classify spans from their first and last word (boundary features, as in PURE).
    span_ends: bool = False
    #: Size of a learnt embedding of each word's shape (`kelm.extract.inputs.SHAPES`) joined to
    #: its vector; 0 leaves it out.
    shape_dim: int = 0


@dataclass
class Encoded:
    """One pass of the encoder over a batch: words, spans and sentence vectors."""

    words_BNH: Tensor
    spans_BSH: Tensor
    cls_BH: Tensor
    starts_S: Tensor
    ends_S: Tensor


class SpanRelationExtractor(nn.Module):
    """Entity logits over every candidate span and relation logits over span pairs.

    ``forward(op, **batch)`` runs ``train`` (both heads on the batch's gold pairs), ``spans``
    (encoder and entity head) or ``relations`` (relation head on given pairs), so DDP's hooks see
    every use."""

    def __init__(self, encoder: nn.Module, settings: ExtractorSettings):
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # spans read the token vectors; an unused pooler would stall DDP
        self.encoder, self.settings = encoder, settings
        hidden = int(encoder.config.hidden_size)
        s = settings
        word = hidden + s.shape_dim  # a word's vector: the encoder's, then its shape's
        self.width = nn.Embedding(s.max_width + 1, s.width_dim)
        self.shape = nn.Embedding(len(SHAPES), s.shape_dim, padding_idx=0) if s.shape_dim else None
        self.dropout = nn.Dropout(s.dropout)
        span_in = (3 if s.span_ends else 1) * word + hidden + s.width_dim
        self.entity_head = nn.Linear(span_in, len(s.entity_types) + 1)  # 0 = no entity
        self.relation_head = nn.Linear(3 * word + 2 * s.width_dim, len(s.relation_types))

    def forward(self, op: str, **batch: Any) -> Any:
        if op == "train":
            enc = self.encode(batch)
            return self.entity_logits(enc), self.relation_logits(enc, batch["pairs"])
        if op == "spans":
            enc = self.encode(batch)
            return enc, self.entity_logits(enc)
        if op == "relations":
            return self.relation_logits(batch["encoded"], batch["pairs"])
        raise ValueError(f"unknown op {op!r}")

    def encode(self, batch: dict[str, Any]) -> Encoded:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        tokens_BTH = self.encoder(**inputs).last_hidden_state
        n_words = int(batch["n_words"].max()) if len(batch["n_words"]) else 0
        words_BNH = word_maxima(tokens_BTH, batch["word_of_token"], max(n_words, 1))
        if self.shape is not None:
            shapes_BN = batch["word_shapes"][:, : words_BNH.shape[1]]
            if shapes_BN.shape[1] < words_BNH.shape[1]:  # a batch of empty sentences
                shapes_BN = nn.functional.pad(shapes_BN, (0, words_BNH.shape[1] - shapes_BN.shape[1]))
            words_BNH = torch.cat([words_BNH, self.shape(shapes_BN)], dim=-1)
        starts, ends = span_bounds(words_BNH.shape[1], self.settings.max_width)
        return Encoded(
            words_BNH,
            span_maxima(words_BNH, self.settings.max_width),
            tokens_BTH[:, 0],
            starts.to(tokens_BTH.device),
            ends.to(tokens_BTH.device),
        )

    def entity_logits(self, enc: Encoded) -> Tensor:
        """``(B, S, entity types + 1)``."""
        B, S, _ = enc.spans_BSH.shape
        width = self.width(enc.ends_S - enc.starts_S)[None].expand(B, S, -1)
        cls = enc.cls_BH[:, None].expand(B, S, -1)
        parts = [enc.spans_BSH, width, cls]
        if self.settings.span_ends:
            parts += [enc.words_BNH[:, enc.starts_S], enc.words_BNH[:, enc.ends_S - 1]]
        return self.entity_head(self.dropout(torch.cat(parts, dim=-1)))

    def relation_logits(self, enc: Encoded, pairs_P3: Tensor) -> Tensor:
        """``(P, relation types)`` for pairs ``(sentence, head span, tail span)`` of flat span indices."""
        if len(pairs_P3) == 0:
            return enc.spans_BSH.new_zeros(0, len(self.settings.relation_types))
        b, i, j = pairs_P3.unbind(1)
        head, tail = enc.spans_BSH[b, i], enc.spans_BSH[b, j]
        lo = torch.minimum(enc.ends_S[i], enc.ends_S[j])
        hi = torch.maximum(enc.starts_S[i], enc.starts_S[j])
        ctx = between_maxima(enc.words_BNH, b, lo, hi)
        widths = [self.width(enc.ends_S[k] - enc.starts_S[k]) for k in (i, j)]
        return self.relation_head(self.dropout(torch.cat([head, tail, ctx, *widths], dim=-1)))


__all__ = ["Encoded", "ExtractorSettings", "SpanRelationExtractor"]
