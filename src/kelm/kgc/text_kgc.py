"""Text of a knowledge graph for a bi-encoder, the scoring adapter for the filtered ranker, the
KEPLER knowledge-embedding loss, and loading a trained ``text-kgc`` model for prediction.

Texts: a candidate entity is "label: description" (description cut to ``max_words`` words
before tokenising); an entity without a description falls back to its label (its id when it has
no label), with one warning giving the count. A query is the tokenizer's text pair
("head label: head description", "relation label"), i.e. "[CLS] head … [SEP] relation [SEP]";
relation ``r + R`` is the reciprocal of ``r`` and reads "inverse of <relation label>".

Graphs without descriptions but with entity types (CoDEx) can use the types' labels instead
(`type_texts`): "human, politician"; an entity without a labelled type falls back to its label
(its id), with one warning giving the count.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kelm.kg.model import KnowledgeGraph

TEXTS_FILE = "texts.json"
ENCODER_DIR = "encoder"


class DescriptionWarning(UserWarning):
    """Some entities have no description; their label stands in for it."""


class TypeTextWarning(UserWarning):
    """Some entities have no labelled type; their label (or id) stands in for their text."""


def _words(text: str, limit: int) -> str:
    return " ".join(text.split()[:limit])


def entity_texts(kg: KnowledgeGraph, entity_ids: Sequence[str], max_words: int, warn: bool = True) -> list[str]:
    """Candidate text per entity (in ``entity_ids`` order); one `DescriptionWarning` for those without one."""
    texts, missing = [], 0
    for eid in entity_ids:
        e = kg.entities[eid]
        name = " ".join((e.label or e.id).split())
        desc = _words(e.description or "", max_words)
        missing += not desc
        texts.append(f"{name}: {desc}" if desc else name)
    if missing and warn:
        warnings.warn(
            f"{missing} of {len(texts)} entities have no description; their label is used as their text",
            DescriptionWarning,
            stacklevel=2,
        )
    return texts


def type_texts(
    kg: KnowledgeGraph, entity_ids: Sequence[str], type_labels: Mapping[str, str], warn: bool = True
) -> list[str]:
    """Text per entity (in ``entity_ids`` order) from the labels of its types, in the order the
    types are listed, without repeats ("human, politician"). Type ids without a label are
    skipped; an entity left without any falls back to its label, else its id, and these are
    counted in one `TypeTextWarning`."""
    texts, missing = [], 0
    for eid in entity_ids:
        e = kg.entities[eid]
        labels = dict.fromkeys(" ".join(type_labels[t].split()) for t in e.types if type_labels.get(t))
        labels.pop("", None)
        missing += not labels
        texts.append(", ".join(labels) if labels else " ".join((e.label or e.id).split()))
    if missing and warn:
        warnings.warn(
            f"{missing} of {len(texts)} entities have no labelled type; their label (or id) is used as their text",
            TypeTextWarning,
            stacklevel=2,
        )
    return texts


def relation_texts(kg: KnowledgeGraph, relation_ids: Sequence[str]) -> list[str]:
    """Texts of relations ``0 … R-1`` followed by their reciprocals ``R … 2R-1``."""
    labels = [" ".join((kg.relations[r].label or r).replace("_", " ").split()) for r in relation_ids]
    return labels + [f"inverse of {label}" for label in labels]


@dataclass
class KGCTexts:
    """Entity and relation texts plus the tokenizer that turns them into model inputs."""

    tokenizer: Any
    entities: list[str]
    relations: list[str]  # 2R: relations, then their reciprocals
    max_length: int

    def _encode(self, first: list[str], second: list[str] | None = None) -> dict[str, Tensor]:
        enc = self.tokenizer(
            first, second, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        )
        return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def candidate_inputs(self, ids: Sequence[int]) -> dict[str, Tensor]:
        return self._encode([self.entities[i] for i in ids])

    def query_inputs(self, heads: Sequence[int], relations: Sequence[int]) -> dict[str, Tensor]:
        return self._encode([self.entities[h] for h in heads], [self.relations[r] for r in relations])

    def save(self, folder: Path) -> None:
        from kelm.atomic import write_text_atomic

        data = {"entities": self.entities, "relations": self.relations, "max_length": self.max_length}
        write_text_atomic(folder / TEXTS_FILE, json.dumps(data, ensure_ascii=False))


def prefixed(prefix: str, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in inputs.items()}


class TextScoring:
    """`FilteredRankEvaluator`'s view of a bi-encoder: every entity is embedded once from its text
    (batched, no grad) when the adapter is made; a query is embedded and scored against all of
    them with one matmul (cosines). Head queries ``(?, r, t)`` are tail queries ``(t, r + R, ?)``."""

    def __init__(
        self,
        encode: Callable[..., Tensor],
        texts: KGCTexts,
        num_relations: int,
        device: torch.device | str = "cpu",
        batch_size: int = 128,
    ):
        self.encode, self.texts, self.device, self.batch_size = encode, texts, torch.device(device), batch_size
        self.num_relations = num_relations
        self.num_entities = len(texts.entities)
        with torch.no_grad():
            ids = list(range(self.num_entities))
            parts = [
                self._embed(texts.candidate_inputs(ids[i : i + batch_size])) for i in range(0, len(ids), batch_size)
            ]
        self.entity_emb = torch.cat(parts)

    def _embed(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.encode(**{k: v.to(self.device) for k, v in inputs.items()}).float()

    @torch.no_grad()
    def queries(self, h: Tensor, r: Tensor) -> Tensor:
        hs, rs = h.tolist(), r.tolist()
        parts = [
            self._embed(self.texts.query_inputs(hs[i : i + self.batch_size], rs[i : i + self.batch_size]))
            for i in range(0, len(hs), self.batch_size)
        ]
        return torch.cat(parts) if parts else self.entity_emb.new_zeros(0, self.entity_emb.shape[1])

    def score_t(self, h: Tensor, r: Tensor, candidates: Tensor | None = None) -> Tensor:
        q = self.queries(h, r)
        if candidates is None:
            return (q @ self.entity_emb.T).to(h.device)
        if candidates.dim() == 1:
            return (q @ self.entity_emb[candidates.to(self.device)].T).to(h.device)
        return torch.einsum("bd,bcd->bc", q, self.entity_emb[candidates.to(self.device)]).to(h.device)

    def score_h(self, r: Tensor, t: Tensor, candidates: Tensor | None = None) -> Tensor:
        return self.score_t(t, r + self.num_relations, candidates)


def transe_loss(h_BD: Tensor, r_BD: Tensor, t_BD: Tensor, gamma: float) -> Tensor:
    """KEPLER's knowledge-embedding loss with TransE over text-derived entity embeddings:
    ``−log σ(γ − d(h + r, t)) − mean_j log σ(d(h + r, t_j) − γ)`` where the negatives ``t_j`` are
    the batch's other tails and ``d`` is the L2 distance."""
    hr = h_BD + r_BD
    d_BB = torch.cdist(hr.float(), t_BD.float())
    pos = d_BB.diagonal()
    B = len(d_BB)
    if B == 1:
        return -F.logsigmoid(gamma - pos).mean()
    off = ~torch.eye(B, dtype=torch.bool, device=d_BB.device)
    neg = F.logsigmoid(d_BB - gamma)[off].view(B, B - 1).mean(1)
    return (-F.logsigmoid(gamma - pos) - neg).mean()


# -- a trained model ------------------------------------------------------------------------------
@dataclass
class TextKGCModel:
    """A trained ``text-kgc`` model folder: bi-encoder (eval mode), texts, vocabularies, spec."""

    model: nn.Module
    texts: KGCTexts
    entity_ids: list[str]
    entity_labels: list[str]
    relation_ids: list[str]
    relation_labels: list[str]
    spec: dict[str, Any]
    folder: Path

    def scoring(self, batch_size: int = 128) -> Any:
        """Text scoring over all entities, mixed with the structural model if the run had one."""
        text = TextScoring(self.model.encode, self.texts, len(self.relation_ids), batch_size=batch_size)
        hybrid = self.spec.get("hybrid_kge")
        if hybrid:
            from kelm.kge.mixing import HybridScoring, load_structural

            struct = load_structural(hybrid, self.entity_ids, self.relation_ids)
            return HybridScoring(text, struct, float(self.spec.get("alpha", 0.5)))
        return text


def load_text_kgc(path: str | Path) -> TextKGCModel:
    """Rebuild a ``text-kgc`` model from a run folder (or its ``model/``)."""

    from transformers import AutoConfig, AutoTokenizer

    from kelm.artifacts import read_model_spec
    from kelm.kg.vocab import ENTITIES_FILE, RELATIONS_FILE, read_vocab
    from kelm.kgc.encoders import BiEncoder, encoder_from_config
    from kelm.lm.hf import quiet
    from kelm.train.export import load_weights

    folder, spec = read_model_spec(path, "text-kgc")
    enc_dir = folder / ENCODER_DIR
    with quiet():
        config = AutoConfig.from_pretrained(str(enc_dir))
        tokenizer = AutoTokenizer.from_pretrained(str(enc_dir), use_fast=True)
    kepler = bool(spec.get("kepler"))
    model = BiEncoder(encoder_from_config(config, kepler), kepler, 2 * int(spec["num_relations"]))
    load_weights(model, folder)
    data = json.loads((folder / TEXTS_FILE).read_text(encoding="utf-8"))
    texts = KGCTexts(tokenizer, data["entities"], data["relations"], int(data["max_length"]))
    ent_ids, ent_labels = read_vocab(folder / ENTITIES_FILE)
    rel_ids, rel_labels = read_vocab(folder / RELATIONS_FILE)
    return TextKGCModel(model.eval(), texts, ent_ids, ent_labels, rel_ids, rel_labels, spec, folder)


__all__ = [
    "DescriptionWarning",
    "KGCTexts",
    "TextKGCModel",
    "TextScoring",
    "TypeTextWarning",
    "entity_texts",
    "load_text_kgc",
    "relation_texts",
    "transe_loss",
    "type_texts",
]
