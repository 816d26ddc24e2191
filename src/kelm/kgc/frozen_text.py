"""Text-conditioned KG embeddings over a frozen encoder: entities are read once, never memorised.

Each entity's text ("label: description", and its label alone) goes through a frozen sentence
encoder (MiniLM by default) once; the two mean-pooled vectors, concatenated, are the entity's
*features*, cached on disk under a hash of the encoder and the texts. `FrozenTextScorer` learns
only a dropout + linear projection from features to a complex vector and a table of
(reciprocal) relation vectors, and scores with ComplEx, ``Re⟨h, r, t̄⟩``. No entity has a free
parameter, so an entity that training never saw is scored from its description exactly like
any other: this is what makes the model inductive, and at ~0.4 M parameters it trains in
seconds on a CPU, where fine-tuning the encoder takes minutes per epoch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from kelm.atomic import atomic_path
from kelm.errors import DataError
from kelm.kg.model import KnowledgeGraph
from kelm.kge.losses import all_entity_loss

KIND = "frozen-text-kgc"


def feature_texts(kg: KnowledgeGraph, entity_ids: Sequence[str], max_words: int) -> tuple[list[str], list[str]]:
    """Per entity: "label: description" (cut to ``max_words`` words) and the label alone."""
    from kelm.kgc.text_kgc import entity_texts

    labels = [" ".join((kg.entities[e].label or e).replace("_", " ").split()) for e in entity_ids]
    return entity_texts(kg, entity_ids, max_words, warn=False), labels


def text_features(
    texts: Sequence[str],
    labels: Sequence[str],
    encoder: str = "minilm",
    max_length: int = 128,
    cache_dir: str | Path | None = None,
) -> Tensor:
    """``(E, 2·H)`` frozen-encoder features: [embedding of text ‖ embedding of label], L2-normalised
    halves. Read from (or written atomically to) ``cache_dir`` when given."""
    key = hashlib.sha256(json.dumps([encoder, max_length, list(texts), list(labels)]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"text-features-{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        return load_file(str(path))["features"]
    from kelm.lm.encoding import load_text_embedder

    embed, _ = load_text_embedder(encoder, max_length)
    with torch.no_grad():
        feats = torch.cat([embed(list(texts)), embed(list(labels))], 1).float().contiguous()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"features": feats}, str(tmp))
    return feats


class FrozenTextScorer(nn.Module):
    """ComplEx over entity vectors projected from fixed text features; reciprocal relations.

    ``forward(op, …)`` takes the link-prediction ops (``score_t(h, r, candidates)``,
    ``score_h(r, t, candidates)``), so the link-prediction task's scoring and evaluator apply."""

    def __init__(self, features: Tensor, num_relations: int, dim: int, dropout: float = 0.0):
        super().__init__()
        self.num_relations, self.dim = num_relations, dim
        self.register_buffer("features", features.float().clone())
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(features.shape[1], 2 * dim)
        self.relations = nn.Embedding(2 * num_relations, 2 * dim)
        nn.init.normal_(self.relations.weight, std=0.1)
        self.frozen_table: Tensor | None = None

    def entities(self) -> Tensor:
        """``(E, 2·dim)``: real parts, then imaginary parts (the table `freeze_entities` kept, if any)."""
        if self.frozen_table is not None:
            if self.frozen_table.device != self.features.device:  # moved since: project again
                self.freeze_entities()
            return self.frozen_table
        return self.proj(self.dropout(self.features))

    def freeze_entities(self) -> FrozenTextScorer:
        """For inference: project the features once and score against that table until `train`."""
        self.eval()
        with torch.no_grad():
            self.frozen_table = self.proj(self.features)
        return self

    def train(self, mode: bool = True) -> FrozenTextScorer:
        self.frozen_table = None
        return super().train(mode)

    def forward(self, op: str, *args: Any) -> Tensor:
        if op == "score_t":
            return self.score_t(*args)
        if op == "score_h":
            r, t, *rest = args
            return self.score_t(t, r + self.num_relations, *rest)
        if op == "loss_all":
            return self.loss_all(*args)
        raise ValueError(f"unknown op {op!r}")

    def _query(self, h: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
        """The entity table and the query vectors ``q`` with ``score = q · [t_re, t_im]``."""
        ents, d = self.entities(), self.dim
        eh, er = ents[h], self.relations(r)
        hr, hi, rr, ri = eh[:, :d], eh[:, d:], er[:, :d], er[:, d:]
        return ents, torch.cat([hr * rr - hi * ri, hr * ri + hi * rr], 1)  # h ∘ r; Re⟨q, t̄⟩

    def loss_all(
        self, e: Tensor, r: Tensor, is_tail: Tensor, rows: Tensor, cols: Tensor, kind: str, eps: float
    ) -> Tensor:
        """The 1-N loss of tail queries over all entities (`kelm.kge.losses.all_entity_loss`)."""
        if not bool(is_tail.all()):
            raise ValueError("frozen-text scoring asks head queries as tail queries of r + R")
        ents, q = self._query(e, r)
        return all_entity_loss(q, ents, rows, cols, kind, eps)

    def score_t(self, h: Tensor, r: Tensor, candidates: Tensor | None = None) -> Tensor:
        """Scores of tails: all entities ``(B, E)``, a shared ``(C,)`` set or per-row ``(B, C)`` sets."""
        ents, q = self._query(h, r)
        if candidates is None:
            return q @ ents.T
        if candidates.dim() == 1:
            return q @ ents[candidates].T
        return torch.einsum("bd,bcd->bc", q, ents[candidates])


@dataclass
class FrozenTextModel:
    """A trained ``frozen-text-kgc`` model folder: scorer (eval mode), vocabularies, spec."""

    model: FrozenTextScorer
    entity_ids: list[str]
    entity_labels: list[str]
    relation_ids: list[str]
    relation_labels: list[str]
    spec: dict[str, Any]

    def scoring(self) -> Any:
        """What `FilteredRankEvaluator.rank` and `HybridScoring` take."""
        from kelm.kge.scorer import Scoring

        return Scoring(self.model, len(self.entity_ids), len(self.relation_ids), self.model.dim)


def load_frozen_text(path: str | Path) -> FrozenTextModel:
    """Rebuild a ``frozen-text-kgc`` model from a run folder (or its ``model/``)."""
    from kelm.artifacts import CONFIG, read_model_spec
    from kelm.kg.vocab import ENTITIES_FILE, RELATIONS_FILE, read_vocab
    from kelm.train.export import load_weights

    folder, spec = read_model_spec(path, KIND)
    try:
        shape = (int(spec["num_entities"]), int(spec["feature_dim"]))
        model = FrozenTextScorer(torch.zeros(shape), int(spec["num_relations"]), int(spec["dim"]))
    except (OSError, ValueError, KeyError, TypeError) as err:  # TOMLDecodeError is a ValueError
        raise DataError(f"cannot rebuild the model from its config ({err})", folder / CONFIG) from None
    load_weights(model, folder)
    ent_ids, ent_labels = read_vocab(folder / ENTITIES_FILE)
    rel_ids, rel_labels = read_vocab(folder / RELATIONS_FILE)
    return FrozenTextModel(model.freeze_entities(), ent_ids, ent_labels, rel_ids, rel_labels, spec)


__all__ = ["FrozenTextModel", "FrozenTextScorer", "feature_texts", "load_frozen_text", "text_features"]
