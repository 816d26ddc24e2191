"""Distillation of one KGE model into another over the same graph: the student matches the
teacher's distribution of scores over all entities for each training query (temperature-softened
KL, as Hinton et al. for logits; for KGE as in MulDE and DualDE), so a small embedding (dim 64-128)
learns from a large one (dim 1024)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kelm.artifacts import read_model_spec
from kelm.compress.losses import logit_kd
from kelm.errors import ConfigError
from kelm.kg.vocab import ENTITIES_FILE, RELATIONS_FILE, read_vocab


def load_teacher(path: str | Path, entity_ids: list[str], relation_ids: list[str]) -> nn.Module:
    """The frozen KGE model of a run trained on the same entities and relations, in the same order."""
    from kelm.kge.folder import load_kge

    folder, _ = read_model_spec(path, "kge")
    for name, ours in ((ENTITIES_FILE, entity_ids), (RELATIONS_FILE, relation_ids)):
        theirs = read_vocab(folder / name)[0]
        if theirs != list(ours):
            raise ConfigError(
                f"task.teacher: {folder / name} lists other ids than this graph; distil on the same graph"
            )
    model, _ = load_kge(folder)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def all_entity_scores(model: nn.Module, e: torch.Tensor, r: torch.Tensor, tail: torch.Tensor, R: int) -> torch.Tensor:
    """Scores ``(B, E)`` of every entity for queries ``(e, r, ?)`` where ``tail`` else ``(?, r, e)``;
    a relation id ``r ≥ R`` is the reciprocal of ``r - R`` (a head query on it). ``model`` is a
    `KGEScorer` (reciprocal or not: its ``score_h`` handles both)."""
    recip = r >= R
    rel = torch.where(recip, r - R, r)
    is_tail = tail.bool() & ~recip
    out: torch.Tensor | None = None
    for mask, op in ((is_tail, "score_t"), (~is_tail, "score_h")):
        if not bool(mask.any()):
            continue
        idx = mask.nonzero().flatten()
        part = model(op, e[idx], rel[idx]) if op == "score_t" else model(op, rel[idx], e[idx])
        if out is None:
            out = part.new_empty(len(e), part.shape[1])
        out[idx] = part
    assert out is not None
    return out


def score_kd(
    student: nn.Module,
    teacher: nn.Module,
    e: torch.Tensor,
    r: torch.Tensor,
    tail: torch.Tensor,
    R: int,
    temperature: float,
) -> torch.Tensor:
    """KL of the teacher's score distribution over all entities to the student's, per query."""
    s = all_entity_scores(student, e, r, tail, R)
    with torch.no_grad():
        t = all_entity_scores(teacher, e, r, tail, R)
    return logit_kd(s, t, temperature)


__all__ = ["all_entity_scores", "load_teacher", "score_kd"]
