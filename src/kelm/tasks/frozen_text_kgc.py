"""Text-conditioned link prediction over a frozen encoder (`kelm.kgc.frozen_text`).

Training is 1-vs-all cross-entropy (label-smoothed) with reciprocal relations: each training
triple ``(h, r, t)`` and its inverse ``(t, r + R, h)`` score every candidate entity. With an
inductive split the held-out entities are left out of the training candidates, so training
never reads their text; evaluation scores all entities, seen or not, from their features with
the same filtered ranker as link prediction.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from kelm.kg.datasets import load_graph
from kelm.kg.model import KnowledgeGraph
from kelm.kgc.frozen_text import KIND, FrozenTextScorer, feature_texts, text_features
from kelm.kge.training import OneVsAll
from kelm.tasks.link_prediction import LinkPredictionTask, TeacherFields, load_graph_teacher
from kelm.train.config import TrainConfig
from kelm.train.task import Batch


class FrozenTextKGCConfig(TeacherFields):
    """``[task]`` for ``frozen-text-kgc`` (with ``teacher``: distilled from a stronger model of the
    same graph, e.g. a text-KGC bi-encoder or its hybrid, or a large KGE model)."""

    name: Literal["frozen-text-kgc"] = "frozen-text-kgc"
    dataset: str = Field(..., min_length=1, description="registered data-set name or a folder/file of triples")
    data_dir: str | None = None
    # text features (computed once by the frozen encoder)
    encoder: str = Field("minilm", description="minilm, tiny-bert or a checkpoint folder")
    max_length: int = Field(128, ge=8, description="tokens per entity text")
    max_words: int = Field(64, ge=1, description="description words kept before tokenising")
    feature_cache: str | None = Field(None, description="folder caching the entity features")
    # scorer
    dim: int = Field(256, ge=1, description="complex dimensions of the projected entity vectors")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the text features")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    # inductive split
    inductive: float | None = Field(None, gt=0, lt=1, description="share of entities held out of training")
    inductive_seed: int = 0
    # evaluation
    eval_memory_mb: float = Field(256.0, gt=0)
    train_split: str = "train"
    valid_split: str | None = "valid"
    test_split: str | None = "test"


def _graph(cfg: FrozenTextKGCConfig, kg: KnowledgeGraph | None) -> tuple[KnowledgeGraph, frozenset[str]]:
    """The graph to learn from (with ``inductive``, its inductive split) and the unseen entities."""
    kg = kg if kg is not None else load_graph(cfg.dataset, cfg.data_dir)
    if not cfg.inductive:
        return kg, frozenset()
    from kelm.kgc.inductive import inductive_split

    split = inductive_split(kg, cfg.inductive, cfg.inductive_seed, cfg.train_split)
    return split.kg, split.unseen


class FrozenTextKGCTask(LinkPredictionTask):
    """Link prediction whose entity vectors are projections of frozen text features."""

    config_class = FrozenTextKGCConfig

    name = KIND

    def __init__(self, cfg: FrozenTextKGCConfig, kg: KnowledgeGraph | None = None):
        """Split (inductively if asked), index the graph and read every entity's text features."""
        self.cfg = cfg  # type: ignore[assignment]
        self.kg, self.unseen = _graph(cfg, kg)
        self._index_splits()
        # training ranks each true tail among the entities seen in training
        seen = torch.tensor([e not in self.unseen for e in self.tensors.entity_ids]).nonzero().squeeze(1)
        E, R = self._num_entities, self.tensors.num_relations
        self.regime = OneVsAll(self.train_triples, E, R, True, cfg.label_smoothing, candidates=seen)  # type: ignore[arg-type]
        texts, labels = feature_texts(self.kg, self.tensors.entity_ids, cfg.max_words)
        self.features = text_features(texts, labels, cfg.encoder, cfg.max_length, cfg.feature_cache)
        self.distill_columns = seen if len(seen) < E else None  # distillation ranks among these alone
        self.teacher = load_graph_teacher(cfg, self.tensors)

    # -- model ----------------------------------------------------------------------------------
    def model_spec(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "kind": KIND,
            "encoder": c.encoder,
            "dim": c.dim,
            "dropout": c.dropout,
            "feature_dim": int(self.features.shape[1]),
            "num_entities": self.tensors.num_entities,
            "num_relations": self.tensors.num_relations,
            "unseen": sorted(self.unseen),
        }

    def configure(self, train: TrainConfig) -> None:
        """No entity table to check: entity vectors are projections of the text features."""
        return None

    def build_model(self) -> nn.Module:
        return FrozenTextScorer(self.features, self.tensors.num_relations, self.cfg.dim, self.cfg.dropout)

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy of each true tail among the entities seen in training (no regularizer),
        mixed with the teacher's score distributions over the same entities when there is one."""
        return self.with_teacher(self.regime.loss(model, batch)[0], model, batch), {}


__all__ = ["FrozenTextKGCConfig", "FrozenTextKGCTask"]
