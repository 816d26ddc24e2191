"""Knowledge-guided routing inputs (DEMix-style): per-token KG domain ids from entity linking.

A `DomainLexicon` maps KG entities to a small set of domains (UMLS: the semantic group of the
entity, found through its ``isa`` ancestors, `semantic_group`). Text is linked with
kelm's `EntityLinker` (dictionary stage: labels, and ids with ``_`` as spaces); every token whose
character span overlaps a linked mention gets the mention's domain, every other token `NONE`.
`MoELayer` adds a learned embedding of that domain to the router input (``n_domains`` > 0).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from kelm.errors import ConfigError
from kelm.linking.linker import EntityLinker, Mention

#: The UMLS semantic groups used as domains (and as the labels of the ``umls-groups`` data set).
GROUPS = (
    "organism",
    "anatomical_structure",
    "substance",
    "manufactured_object",
    "conceptual_entity",
    "activity",
    "phenomenon_or_process",
)


def semantic_group(entity: str, ancestors: dict[str, set[str]]) -> str | None:
    up = ancestors.get(entity, set()) | {entity}
    return next((g for g in GROUPS if g in up), None)


#: Domain id of a token outside every linked mention (no embedding is added for it).
NONE = -1
SOURCES = ("umls",)


@dataclass
class DomainLexicon:
    """Domain names (index = domain id), each entity's domain, and the names to link entities by."""

    names: list[str]
    entity_domain: dict[str, int]
    labels: dict[str, str] = field(default_factory=dict)

    @cached_property
    def linker(self) -> EntityLinker:
        labels = {e: self.labels.get(e) or e for e in self.entity_domain}
        aliases = {e: [e.replace("_", " ")] for e in self.entity_domain}
        return EntityLinker(labels, aliases)

    def mentions(self, texts: Sequence[str]) -> list[list[Mention]]:
        """Linked mentions of entities that have a domain, per text."""
        found = self.linker.link_many(list(texts))
        return [[m for m in ms if m.entity in self.entity_domain] for ms in found]

    def char_domains(self, text: str, mentions: Sequence[Mention] | None = None) -> list[int]:
        """One domain id per character of ``text``."""
        out = [NONE] * len(text)
        for m in self.mentions([text])[0] if mentions is None else mentions:
            out[m.start : m.end] = [self.entity_domain[m.entity]] * (m.end - m.start)
        return out

    def token_domains(
        self, text: str, offsets: Sequence[tuple[int, int]], mentions: Sequence[Mention] | None = None
    ) -> list[int]:
        """One domain id per token, tokens given by ``(start, end)`` character offsets (a tokenizer's
        ``offset_mapping``; empty spans, such as special tokens, get `NONE`). A token takes the
        domain of the first mention it overlaps, so every sub-word of a linked word gets it."""
        spans = sorted(self.mentions([text])[0] if mentions is None else mentions, key=lambda m: m.start)
        out = []
        for start, end in offsets:
            hit = next((m for m in spans if start < m.end and m.start < end), None) if end > start else None
            out.append(self.entity_domain[hit.entity] if hit is not None else NONE)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "entity_domain": dict(self.entity_domain), "labels": dict(self.labels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DomainLexicon:
        return cls(list(data["names"]), {k: int(v) for k, v in data["entity_domain"].items()}, dict(data["labels"]))


def umls_lexicon(kg: Any) -> DomainLexicon:
    """UMLS semantic groups as domains (`GROUPS`); entities above every group are left out."""
    ancestors: dict[str, set[str]] = defaultdict(set)
    for triple in kg.triples():
        head, relation, tail = triple.key()
        if relation == "isa":
            ancestors[head].add(tail)
    domains: dict[str, int] = {}
    for entity in sorted(kg.entities):
        group = semantic_group(entity, ancestors)
        if group is not None:
            domains[entity] = GROUPS.index(group)
    labels = {e: kg.entities[e].label or e.replace("_", " ") for e in domains}
    return DomainLexicon(list(GROUPS), domains, labels)


def load_lexicon(source: str, data_dir: str | None = None) -> DomainLexicon:
    """The lexicon of a named source (``umls``: the bundled or prepared UMLS graph)."""
    if source not in SOURCES:
        raise ConfigError(f"moe domain routing: unknown domain source '{source}' (choose one of: {', '.join(SOURCES)})")
    from kelm.kg.datasets import load_graph

    return umls_lexicon(load_graph(source, data_dir))


def byte_domains(lexicon: DomainLexicon, data: bytes, documents: bool = False) -> torch.Tensor:
    """One domain id per byte of a UTF-8 corpus (int8), linking each line separately. With
    ``documents``, a line ``entity_id<TAB>text`` (an entity description) gives all its bytes that
    entity's domain first; linked mentions inside keep their own."""
    out = torch.full((len(data),), NONE, dtype=torch.int8)
    lines = data.split(b"\n")
    texts = [line.decode("utf-8") for line in lines]
    offset = 0
    for line, text, mentions in zip(lines, texts, lexicon.mentions(texts), strict=True):
        if documents and b"\t" in line:
            domain = lexicon.entity_domain.get(text.split("\t", 1)[0])
            if domain is not None:
                out[offset : offset + len(line)] = domain
        if mentions:
            # character offsets → byte offsets of this line
            starts = [0]
            for ch in text:
                starts.append(starts[-1] + len(ch.encode("utf-8")))
            for m in mentions:
                out[offset + starts[m.start] : offset + starts[m.end]] = lexicon.entity_domain[m.entity]
        offset += len(line) + 1
    return out


# -- domains from token ids (models that only see input_ids) ------------------------------------


def wordpiece_text(pieces: Sequence[str], special: set[str]) -> tuple[str, list[tuple[int, int]]]:
    """Text rebuilt from WordPiece tokens (``##`` continues a word, anything else starts one) and
    each token's character span in it; special tokens get the empty span ``(0, 0)``."""
    text, offsets = "", []
    for piece in pieces:
        if piece in special:
            offsets.append((0, 0))
            continue
        if piece.startswith("##"):
            start = len(text)
            text += piece[2:]
        else:
            text += " " if text else ""
            start = len(text)
            text += piece
        offsets.append((start, len(text)))
    return text, offsets


class TokenDomainTagger:
    """Domain ids ``(B, T)`` for a batch of WordPiece token ids, each distinct row linked once."""

    def __init__(self, lexicon: DomainLexicon, tokenizer: Any):
        self.lexicon, self.tokenizer = lexicon, tokenizer
        self.special = set(tokenizer.all_special_tokens)
        self._cache: dict[tuple[int, ...], list[int]] = {}

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = [tuple(r) for r in input_ids.tolist()]
        new = [r for r in dict.fromkeys(rows) if r not in self._cache]
        if new:
            built = [wordpiece_text(self.tokenizer.convert_ids_to_tokens(list(r)), self.special) for r in new]
            mentions = self.lexicon.mentions([text for text, _ in built])
            for r, (text, offsets), ms in zip(new, built, mentions, strict=True):
                self._cache[r] = self.lexicon.token_domains(text, offsets, ms)
        return torch.tensor([self._cache[r] for r in rows], dtype=torch.long, device=input_ids.device)
