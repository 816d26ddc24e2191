"""Teachers for KG-completion distillation, of any kind kelm trains on a graph: a KGE run, a text-KGC
bi-encoder (with its structural model when the run was a hybrid) or a frozen-text run. Each is read
frozen and checked to know the student's entities and relations in the same order."""

from __future__ import annotations

from pathlib import Path

from kelm.artifacts import read_model_spec
from kelm.errors import ConfigError
from kelm.kge.distill import ScoreTeacher, check_vocabulary, load_teacher
from kelm.kge.scorer import Scoring

#: Model kinds a teacher may be.
TEACHER_KINDS = ("kge", "text-kgc", "frozen-text-kgc")


def load_score_teacher(
    path: str | Path, entity_ids: list[str], relation_ids: list[str], cache_mb: float = 512.0
) -> ScoreTeacher:
    """The teacher of ``path`` (a run or model folder) for a student over ``entity_ids``/``relation_ids``."""
    folder, spec = read_model_spec(path)
    kind = spec.get("kind")
    R = len(relation_ids)
    if kind == "kge":
        model = load_teacher(folder, entity_ids, relation_ids)
        return ScoreTeacher(Scoring(model, len(entity_ids), R, 0), R, cache_mb, module=model)
    if kind not in TEACHER_KINDS:
        kinds = ", ".join(TEACHER_KINDS)
        raise ConfigError(f"task.teacher: {path} holds a '{kind}' model; a teacher is one of {kinds}")
    check_vocabulary(folder, entity_ids, relation_ids)
    if kind == "text-kgc":
        from kelm.kgc.text_kgc import load_text_kgc

        return ScoreTeacher(load_text_kgc(folder).scoring(), R, cache_mb)
    from kelm.kgc.frozen_text import load_frozen_text

    frozen = load_frozen_text(folder)
    frozen.model.requires_grad_(False)
    return ScoreTeacher(frozen.scoring(), R, cache_mb, module=frozen.model)


__all__ = ["TEACHER_KINDS", "load_score_teacher"]
