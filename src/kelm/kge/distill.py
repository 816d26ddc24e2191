"""Distillation of one KG-completion model into another over the same graph: the student matches the
teacher's distribution of scores over all entities for each training query (temperature-softened
KL, as Hinton et al. for logits; for KGE as in MulDE and DualDE), so a small embedding (dim 64-128)
learns from a large one (dim 1024), or a cheap scorer from an expensive one.

A teacher is anything with ``score_t(h, r)`` and ``score_h(r, t)`` over all entities (a KGE
`Scoring`, a text bi-encoder, a hybrid); `ScoreTeacher` asks it once per distinct training query
and keeps the rows, so an expensive teacher (an LM per query) costs one pass over the queries.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from kelm.compress.losses import logit_kd
from kelm.errors import ConfigError
from kelm.kg.vocab import ENTITIES_FILE, RELATIONS_FILE, read_vocab

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class EntityScorer(Protocol):
    """Scores of all entities for tail queries ``(h, r, ?)`` and head queries ``(?, r, t)``."""

    def score_t(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor: ...

    def score_h(self, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


def check_vocabulary(folder: Path, entity_ids: list[str], relation_ids: list[str]) -> None:
    """A teacher must know the same entities and relations, in the same order, as the student."""
    for name, ours in ((ENTITIES_FILE, entity_ids), (RELATIONS_FILE, relation_ids)):
        theirs = read_vocab(folder / name)[0]
        if theirs != list(ours):
            raise ConfigError(
                f"task.teacher: {folder / name} lists other ids than this graph; distil on the same graph"
            )


def load_teacher(path: str | Path, entity_ids: list[str], relation_ids: list[str]) -> nn.Module:
    """The frozen KGE model of a run trained on the same entities and relations, in the same order."""
    from kelm.artifacts import read_model_spec
    from kelm.kge.folder import load_kge

    folder, _ = read_model_spec(path, "kge")
    check_vocabulary(folder, entity_ids, relation_ids)
    return load_kge(folder)[0].eval().requires_grad_(False)


def query_scores(
    score_t: ScoreFn, score_h: ScoreFn, e: torch.Tensor, r: torch.Tensor, tail: torch.Tensor, R: int
) -> torch.Tensor:
    """Scores ``(B, E)`` of every entity for queries ``(e, r, ?)`` where ``tail`` else ``(?, r, e)``;
    a relation id ``r ≥ R`` is the reciprocal of ``r - R`` (a head query on it)."""
    recip = r >= R
    rel = torch.where(recip, r - R, r)
    is_tail = tail.bool() & ~recip
    out: torch.Tensor | None = None
    for mask, side in ((is_tail, True), (~is_tail, False)):
        if not bool(mask.any()):
            continue
        idx = mask.nonzero().flatten()
        part = score_t(e[idx], rel[idx]) if side else score_h(rel[idx], e[idx])
        if out is None:
            out = part.new_empty(len(e), part.shape[1])
        out[idx] = part
    assert out is not None
    return out


def all_entity_scores(model: nn.Module, e: torch.Tensor, r: torch.Tensor, tail: torch.Tensor, R: int) -> torch.Tensor:
    """`query_scores` of a `KGEScorer`-style module (ops ``score_t``/``score_h``; reciprocal or not)."""
    return query_scores(lambda h, r: model("score_t", h, r), lambda r, t: model("score_h", r, t), e, r, tail, R)


class ScoreTeacher:
    """A frozen teacher's score rows for training queries, computed once per distinct query and kept
    on the CPU while they fit in ``cache_mb`` (beyond it, rows are computed each time they are asked)."""

    def __init__(self, scorer: EntityScorer, num_relations: int, cache_mb: float = 512.0, module: Any = None):
        self.scorer, self.num_relations, self.cache_mb = scorer, num_relations, cache_mb
        self.module = module  # an nn.Module to move to the batch's device (KGE teachers), or None
        self.rows: dict[int, torch.Tensor] = {}
        self.cached_bytes = 0

    def _keys(self, e: torch.Tensor, r: torch.Tensor, tail: torch.Tensor) -> list[int]:
        R = self.num_relations
        recip = r >= R
        rel = torch.where(recip, r - R, r)
        side = (tail.bool() & ~recip).long()
        return ((e.long() * R + rel.long()) * 2 + side).tolist()

    def _compute(self, e: torch.Tensor, r: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        device = e.device
        if self.module is not None:
            if next(self.module.parameters()).device != device:
                self.module.to(device)
        else:  # a scorer that lives on the CPU
            e, r, tail = e.cpu(), r.cpu(), tail.cpu()
        s = self.scorer
        return query_scores(s.score_t, s.score_h, e, r, tail, self.num_relations).float().to(device)

    @torch.no_grad()
    def scores(self, e: torch.Tensor, r: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        """``(B, E)`` teacher scores for the queries, on their device; each distinct query not yet
        kept is scored once (the first row asking for it)."""
        keys = self._keys(e, r, tail)
        first: dict[int, int] = {}
        for i, k in enumerate(keys):
            if k not in self.rows:
                first.setdefault(k, i)
        fresh: dict[int, torch.Tensor] = {}
        if first:
            idx = torch.tensor(list(first.values()), device=e.device)
            fresh = dict(zip(first, self._compute(e[idx], r[idx], tail[idx]).unbind(0), strict=True))
            for k, row in fresh.items():
                if self.cached_bytes >= self.cache_mb * 2**20:
                    break
                self.rows[k] = row.cpu().clone()
                self.cached_bytes += row.numel() * 4
        return torch.stack([fresh[k] if k in fresh else self.rows[k].to(e.device) for k in keys])


def score_kd(
    student: nn.Module,
    teacher: ScoreTeacher,
    e: torch.Tensor,
    r: torch.Tensor,
    tail: torch.Tensor,
    R: int,
    temperature: float,
    columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL of the teacher's score distribution over all entities (or over ``columns``, e.g. the
    entities an inductive split trains on) to the student's, per query."""
    s = all_entity_scores(student, e, r, tail, R)
    t = teacher.scores(e, r, tail)
    if columns is not None:
        s, t = s[:, columns.to(s.device)], t[:, columns.to(t.device)]
    return logit_kd(s, t, temperature)


__all__ = [
    "EntityScorer",
    "ScoreTeacher",
    "all_entity_scores",
    "check_vocabulary",
    "load_teacher",
    "query_scores",
    "score_kd",
]
