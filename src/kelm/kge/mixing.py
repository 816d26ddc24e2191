"""Hybrid scoring: a text (or rule) score and a structural KGE score, each standardised per query, mixed.

``score = α · z(text) + (1 − α) · z(struct)`` where ``z`` subtracts each query's mean over all
candidate entities and divides by its standard deviation, so the two scales (cosines vs. KGE
scores) are comparable. ``α = 1`` returns the text scores and ``α = 0`` the structural scores
unchanged (ranks are the same as with standardisation, which is monotone per query).

The structural model is a kelm link-prediction run (`kelm kge train`): its exported
``model.safetensors`` + ``config.toml`` and its ``entities.tsv``/``relations.tsv`` vocabularies.
Entities and relations are matched by id; a candidate the KGE model does not know gets its
query's mean structural score (0 after standardisation), and a query whose entity or relation it
does not know gets 0 for every candidate.

``α`` is chosen on the validation split: `rank_alphas` ranks the same triples under every ``α`` of
a grid (each query is scored once per side, chunk by chunk, so memory stays one chunk of score
rows per scorer), and `best_alpha` keeps the ``α`` of the highest MRR, the smaller one on ties
(``α = 0`` is structure-only, ``α = 1`` text-only). That ``α`` is then applied once to the test
split.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from kelm.errors import ConfigError, DataError

if TYPE_CHECKING:
    from kelm.kge.evaluation import FilteredRankEvaluator, RankingResult

#: The α grid searched on the validation split when no α is given.
ALPHA_GRID = tuple(round(0.1 * i, 1) for i in range(11))


class Scorer(Protocol):
    num_entities: int

    def score_t(self, h: Tensor, r: Tensor, candidates: Tensor | None = None) -> Tensor: ...

    def score_h(self, r: Tensor, t: Tensor, candidates: Tensor | None = None) -> Tensor: ...


def standardize(scores_BE: Tensor) -> Tensor:
    """Per row: zero mean, unit standard deviation (a constant row becomes zeros)."""
    s = scores_BE.float()
    mean = s.mean(1, keepdim=True)
    std = s.std(1, keepdim=True, unbiased=False).clamp(min=1e-6)
    return (s - mean) / std


def _pick(scores_BE: Tensor, candidates: Tensor | None) -> Tensor:
    if candidates is None:
        return scores_BE
    if candidates.dim() == 1:
        return scores_BE[:, candidates]
    return scores_BE.gather(1, candidates)


class StructuralScorer:
    """A trained KGE model re-indexed onto another vocabulary (ids matched by name)."""

    def __init__(self, model: Any, entity_map: Tensor, relation_map: Tensor):
        self.model = model
        self.entity_map, self.relation_map = entity_map, relation_map  # text index -> KGE index or -1
        self.num_entities = len(entity_map)

    @torch.no_grad()
    def _scores(self, op: str, e: Tensor, r: Tensor) -> Tensor:
        ke, kr = self.entity_map[e.cpu()], self.relation_map[r.cpu()]
        ok = (ke >= 0) & (kr >= 0)
        out = torch.zeros(len(e), self.num_entities)
        if bool(ok.any()):
            args = (ke[ok], kr[ok]) if op == "score_t" else (kr[ok], ke[ok])
            raw = self.model(op, *args).float()  # (b, E_kge)
            known = self.entity_map >= 0
            rows = torch.empty(len(raw), self.num_entities)
            rows[:, known] = raw[:, self.entity_map[known]]
            rows[:, ~known] = raw.mean(1, keepdim=True)
            out[ok] = rows
        return out.to(e.device)

    def score_t(self, h: Tensor, r: Tensor, candidates: Tensor | None = None) -> Tensor:
        return _pick(self._scores("score_t", h, r), candidates)

    def score_h(self, r: Tensor, t: Tensor, candidates: Tensor | None = None) -> Tensor:
        return _pick(self._scores("score_h", t, r), candidates)


def load_structural(
    path: str | Path, entity_ids: list[str], relation_ids: list[str], field: str = "task.hybrid_kge"
) -> StructuralScorer:
    """The link-prediction model of a run folder (or its ``model/``), indexed by these ids; errors
    name ``field``, the setting that gave the folder."""
    from kelm.artifacts import read_model_spec
    from kelm.kg.vocab import ENTITIES_FILE, RELATIONS_FILE, read_vocab
    from kelm.kge.scorer import build_scorer
    from kelm.train.export import load_weights

    try:
        folder, spec = read_model_spec(path, "kge")
    except DataError as err:
        raise ConfigError(f"{field}: {err}") from None
    spec["dropout"] = 0.0
    model = load_weights(build_scorer(spec), folder).eval()
    kge_ents, _ = read_vocab(folder / ENTITIES_FILE)
    kge_rels, _ = read_vocab(folder / RELATIONS_FILE)
    e_idx = {e: i for i, e in enumerate(kge_ents)}
    r_idx = {r: i for i, r in enumerate(kge_rels)}
    ent_map = torch.tensor([e_idx.get(e, -1) for e in entity_ids], dtype=torch.int64)
    rel_map = torch.tensor([r_idx.get(r, -1) for r in relation_ids], dtype=torch.int64)
    if not bool((rel_map >= 0).any()):
        raise ConfigError(f"{field}: {folder} shares no relation with this data set")
    return StructuralScorer(model, ent_map, rel_map)


class HybridScoring:
    """``α · z(text) + (1 − α) · z(struct)``; what `FilteredRankEvaluator.rank` takes."""

    def __init__(self, text: Scorer, struct: Scorer, alpha: float):
        if not 0 <= alpha <= 1:
            raise ConfigError(f"task.alpha must be in [0, 1], got {alpha}")
        if text.num_entities != struct.num_entities:
            raise ValueError("text and structural scorers disagree on the number of entities")
        self.text, self.struct, self.alpha = text, struct, alpha
        self.num_entities = text.num_entities

    def _mix(self, a: Tensor | None, b: Tensor | None) -> Tensor:
        if b is None:
            return a  # type: ignore[return-value]
        if a is None:
            return b
        return self.alpha * standardize(a) + (1 - self.alpha) * standardize(b).to(a.device)

    def score_t(self, h: Tensor, r: Tensor, candidates: Tensor | None = None) -> Tensor:
        a = self.text.score_t(h, r) if self.alpha > 0 else None
        b = self.struct.score_t(h, r) if self.alpha < 1 else None
        return _pick(self._mix(a, b), candidates)

    def score_h(self, r: Tensor, t: Tensor, candidates: Tensor | None = None) -> Tensor:
        a = self.text.score_h(r, t) if self.alpha > 0 else None
        b = self.struct.score_h(r, t) if self.alpha < 1 else None
        return _pick(self._mix(a, b), candidates)


class _Remembered:
    """A scorer whose all-entity score rows are kept per query batch, so that ranking the same
    queries under several α scores them once; every call returns a fresh copy (the ranker
    overwrites filtered entries in place)."""

    def __init__(self, scorer: Scorer):
        self.scorer, self.num_entities = scorer, scorer.num_entities
        self._rows: dict[tuple[str, bytes, bytes], Tensor] = {}

    def _get(self, op: str, a: Tensor, b: Tensor) -> Tensor:
        key = (op, a.cpu().numpy().tobytes(), b.cpu().numpy().tobytes())
        if key not in self._rows:
            self._rows[key] = getattr(self.scorer, op)(a, b)
        return self._rows[key].clone()

    def score_t(self, h: Tensor, r: Tensor, candidates: Tensor | None = None) -> Tensor:
        return _pick(self._get("score_t", h, r), candidates)

    def score_h(self, r: Tensor, t: Tensor, candidates: Tensor | None = None) -> Tensor:
        return _pick(self._get("score_h", r, t), candidates)


def rank_alphas(
    evaluator: FilteredRankEvaluator,
    text: Scorer,
    struct: Scorer,
    triples: Tensor,
    alphas: Iterable[float],
    sides: tuple[str, ...] = ("tail", "head"),
) -> dict[float, RankingResult]:
    """Filtered ranks of ``triples`` under ``α · z(text) + (1 − α) · z(struct)`` for every α.

    Triples go through in the evaluator's chunks; each chunk's queries are scored once by each
    scorer and ranked under every α before the next chunk, so memory is one chunk of rows per
    scorer and side whatever the number of α. Per α, the result holds every query (a chunk's tail queries,
    then its head queries, chunk after chunk)."""
    from kelm.kge.evaluation import RankingResult

    grid = sorted({float(a) for a in alphas})
    if not grid:
        raise ConfigError("task.alpha_grid: give at least one alpha")
    parts: dict[float, list[RankingResult]] = {a: [] for a in grid}
    triples = triples.reshape(-1, 3)
    for chunk in triples.split(max(1, evaluator.chunk_size())):
        t, s = _Remembered(text), _Remembered(struct)
        for a in grid:
            parts[a].append(evaluator.rank(HybridScoring(t, s, a), chunk, sides))
    fields = ("ranks", "sides", "relations")
    empty = torch.zeros(0, dtype=torch.int64)
    return {
        a: RankingResult(*(torch.cat([getattr(p, f) for p in ps]) for f in fields))
        if ps
        else RankingResult(empty.double(), empty, empty)
        for a, ps in parts.items()
    }


def best_alpha(mrr_by_alpha: Mapping[float, float]) -> float:
    """The α of the highest MRR (NaN never wins); on a tie the smaller α, closer to structure-only."""
    if not mrr_by_alpha:
        raise ValueError("no alpha to choose from")
    scored = [(a, m) for a, m in mrr_by_alpha.items() if m == m]
    if not scored:
        return min(mrr_by_alpha)
    return min(scored, key=lambda am: (-am[1], am[0]))[0]


__all__ = [
    "ALPHA_GRID",
    "HybridScoring",
    "StructuralScorer",
    "best_alpha",
    "load_structural",
    "rank_alphas",
    "standardize",
]
