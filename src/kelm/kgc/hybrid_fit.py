"""Fitting and saving a hybrid model: the mixing weight of `HybridScoring`, chosen on validation.

The hybrid of a text model and a structural model has one parameter, ``α`` in
``α · z(text) + (1 − α) · z(struct)``. `choose_alpha` ranks the validation triples under every
``α`` of a grid (`kelm.kgc.hybrid.rank_alphas`) and keeps the best MRR (`best_alpha`: ties go
to the smaller ``α``).

A saved hybrid is a folder with ``hybrid.json`` naming its two component model folders
(relative paths) and ``α``; `load_hybrid` rebuilds the scoring from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kelm.atomic import write_text_atomic
from kelm.errors import DataError
from kelm.kge.mixing import ALPHA_GRID, HybridScoring, Scorer, best_alpha, rank_alphas

HYBRID_FILE = "hybrid.json"


@dataclass
class AlphaChoice:
    alpha: float
    valid_mrr: dict[float, float]  # α -> validation MRR


def choose_alpha(
    evaluator: Any, text: Scorer, struct: Scorer, valid: torch.Tensor, alphas: tuple[float, ...] = ALPHA_GRID
) -> AlphaChoice:
    """The ``α`` of the grid with the best filtered validation MRR (`rank_alphas`, `best_alpha`)."""
    with torch.no_grad():
        ranked = rank_alphas(evaluator, text, struct, valid, alphas)
    mrr = {a: float(r.metrics()["mrr"]) for a, r in ranked.items()}
    return AlphaChoice(best_alpha(mrr), mrr)


def save_hybrid(folder: Path, text_model: Path, struct_model: Path, choice: AlphaChoice) -> None:
    """``folder/hybrid.json``: component folders relative to ``folder``, ``α`` and its validation curve."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "kind": "hybrid",
        "alpha": choice.alpha,
        "text": os.path.relpath(text_model, folder),
        "structure": os.path.relpath(struct_model, folder),
        "valid_mrr": {str(a): m for a, m in choice.valid_mrr.items()},
    }
    write_text_atomic(folder / HYBRID_FILE, json.dumps(data, indent=2) + "\n")


def load_hybrid(folder: str | Path) -> tuple[HybridScoring, Any]:
    """The hybrid scoring saved in ``folder`` and its text model (vocabularies, spec)."""
    from kelm.kgc.frozen_text import load_frozen_text
    from kelm.kge.mixing import load_structural

    path = Path(folder) / HYBRID_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        alpha, text_dir, struct_dir = float(data["alpha"]), data["text"], data["structure"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"not a saved hybrid model ({err})", path) from None
    text = load_frozen_text(Path(folder) / text_dir)
    struct = load_structural(Path(folder) / struct_dir, text.entity_ids, text.relation_ids)
    return HybridScoring(text.scoring(), struct, alpha), text


__all__ = ["HYBRID_FILE", "AlphaChoice", "choose_alpha", "load_hybrid", "save_hybrid"]
