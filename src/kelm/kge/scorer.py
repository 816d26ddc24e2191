"""A KGE model behind one ``forward(op, ...)`` (so DDP and FSDP hooks run) and the evaluator's view of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from kelm.errors import ConfigError
from kelm.kge.sharded import RowShards, entity_shards


class KGEScorer(nn.Module):
    """Routes every use of a KGE model through ``forward``, so DDP and FSDP hooks run.

    ``forward(op, *args)`` calls ``score_hrt``, ``score_t``, ``score_h``, ``loss_all`` or
    ``regularizer`` of the wrapped model. With ``reciprocal`` relations, head queries become tail
    queries on ``r + R``.
    """

    def __init__(self, kge: nn.Module, num_relations: int, reciprocal: bool):
        super().__init__()
        self.kge = kge
        self.num_relations, self.reciprocal = num_relations, reciprocal

    def forward(self, op: str, *args: Any, **kwargs: Any) -> torch.Tensor:
        if op == "score_h" and self.reciprocal:
            r, t = args[:2]
            return self.kge.score_t(t, r + self.num_relations, *args[2:], **kwargs)
        if op not in ("score_hrt", "score_t", "score_h", "loss_all", "regularizer"):
            raise ValueError(f"unknown op {op!r}")
        return getattr(self.kge, op)(*args, **kwargs)


class Scoring:
    """What the evaluator sees: ``score_t``/``score_h`` over the original relations, via ``forward``."""

    def __init__(self, model: nn.Module, num_entities: int, num_relations: int, dim: int):
        self.model = model
        self.num_entities, self.num_relations, self.dim = num_entities, num_relations, dim

    def score_hrt(self, h: torch.Tensor, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model("score_hrt", h, r, t)

    def score_t(self, h: torch.Tensor, r: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        return self.model("score_t", h, r, candidates)

    def score_h(self, r: torch.Tensor, t: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        return self.model("score_h", r, t, candidates)

    @property
    def training(self) -> bool:
        return self.model.training

    def train(self, mode: bool = True) -> Scoring:
        self.model.train(mode)
        return self

    def eval(self) -> Scoring:
        return self.train(False)

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def buffers(self) -> Iterator[torch.Tensor]:
        return self.model.buffers()


def build_scorer(spec: dict[str, Any], shards: RowShards | None = None) -> KGEScorer:
    """The model a ``model_config()["model"]`` table describes; with ``shards`` over several ranks,
    its entity table holds only this rank's rows (`kelm.kge.sharded`), initialised as one process
    would initialise them, and the whole table is never allocated."""
    from kelm.kge.models import KGE_MODELS, build_kge_model

    name = spec["name"]
    KGE_MODELS.check(name, "task.model")
    kwargs = dict(spec.get("options") or {})
    if spec.get("dropout"):
        kwargs["dropout"] = spec["dropout"]
    rels = spec["num_relations"] * (2 if spec["reciprocal"] else 1)
    try:
        with entity_shards(shards):
            kge = build_kge_model(name, spec["num_entities"], rels, spec["dim"], **kwargs)
    except TypeError as err:
        raise ConfigError(f"task.model_options: model '{name}' does not accept these options ({err})") from None
    return KGEScorer(kge, spec["num_relations"], spec["reciprocal"])
