"""A trained link-prediction model read back from its model folder, with its vocabularies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kelm.artifacts import read_model_spec
from kelm.kge.scorer import KGEScorer, build_scorer
from kelm.train.export import load_weights


def load_kge(path: str | Path) -> tuple[KGEScorer, dict[str, Any]]:
    """The exported link-prediction model of a run folder (or its ``model/``), in eval mode, and its
    ``[model]`` table."""
    folder, spec = read_model_spec(path, "kge")
    spec["dropout"] = 0.0
    if isinstance(spec.get("quantization"), dict):  # int8 tables on disk (`kelm compress --method int8`)
        from kelm.compress.int8 import load_int8_weights

        return load_int8_weights(build_scorer(spec), folder).eval(), spec
    model = load_weights(build_scorer(spec), folder)
    return model.eval(), spec


__all__ = ["load_kge"]
