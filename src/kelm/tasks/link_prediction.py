"""Link prediction: train a knowledge-graph embedding model and rank held-out triples.

Three training modes. ``1-n`` (KvsAll) scores every entity for each ``(entity, relation)`` query
seen in training and fits the multi-hot set of true answers with label-smoothed BCE or
cross-entropy. ``1-vs-all`` scores every entity for each training triple and fits its one true
entity with (label-smoothed) cross-entropy. ``negative-sampling`` contrasts each training triple
with corrupted ones (uniform, Bernoulli or shared per batch) under a margin, softplus or
self-adversarial loss.

Both directions are learnt either with reciprocal relations (``r + R`` is the inverse of
``r``, so every query is a tail query) or with head and tail queries. Evaluation ranks the
true entity among all others, filtering every other known triple of train, valid and test.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from kelm.atomic import write_text_atomic
from kelm.config import Section
from kelm.errors import ConfigError, DataError
from kelm.kg.model import KnowledgeGraph
from kelm.kg.tensors import TripleTensors, ragged_gather
from kelm.tasks.base import Batch, Task
from kelm.train.config import KGE_DEFAULTS
from kelm.train.data import BatchRandom

MODES = ("1-n", "1-vs-all", "negative-sampling")
ONE_N_LOSSES = ("bce", "ce")
NS_LOSSES = ("margin", "softplus", "self-adversarial")
RANK_METRICS = ("mrr", "mr", "hits@1", "hits@3", "hits@10")
ENTITIES_FILE = "entities.tsv"
RELATIONS_FILE = "relations.tsv"


class LinkPredictionConfig(Section):
    """``[task]`` for ``link-prediction``."""

    name: Literal["link-prediction"] = "link-prediction"
    dataset: str = Field(..., min_length=1, description="registered data-set name or a folder/file of triples")
    data_dir: str | None = None
    # model
    model: str = "complex"
    dim: int = Field(128, ge=1)
    model_options: dict[str, Any] = Field(default_factory=dict, description="extra model arguments, e.g. p_norm")
    dropout: float = Field(0.0, ge=0, lt=1)
    reciprocal: bool = True
    # training
    training: Literal["1-n", "1-vs-all", "negative-sampling"] = "1-n"
    loss: Literal["bce", "ce", "margin", "softplus", "self-adversarial"] | None = None
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    sampler: Literal["uniform", "bernoulli", "shared"] = "uniform"
    num_negatives: int = Field(64, ge=1)
    margin: float = Field(1.0, description="margin ranking margin; gamma of the self-adversarial loss")
    adversarial_temperature: float = Field(1.0, gt=0)
    regularizer: Literal["none", "n3", "l2"] = "none"
    regularizer_weight: float = Field(0.0, ge=0)
    regularizer_p: int = Field(3, ge=1)
    # evaluation
    eval_memory_mb: float = Field(256.0, gt=0)
    train_split: str = "train"
    valid_split: str | None = "valid"
    test_split: str | None = "test"

    @model_validator(mode="after")
    def _check(self) -> LinkPredictionConfig:
        allowed = {"1-n": ONE_N_LOSSES, "1-vs-all": ("ce",)}.get(self.training, NS_LOSSES)
        if self.loss is not None and self.loss not in allowed:
            raise ValueError(f"loss '{self.loss}' does not fit training '{self.training}' (use {', '.join(allowed)})")
        return self

    @property
    def loss_name(self) -> str:
        return self.loss or {"1-n": "bce", "1-vs-all": "ce"}.get(self.training, "self-adversarial")


# -- data -------------------------------------------------------------------------------------
def load_dataset(dataset: str, data_dir: str | None = None) -> KnowledgeGraph:
    """A registered data set (resolved, never downloaded) or a folder/file of triples."""
    from kelm.kg.io import load_kg

    path, types_dir = Path(dataset), None
    if not path.exists():
        from kelm.data import resolve, resolve_types

        path = resolve(dataset, data_dir=data_dir)
        types_dir = resolve_types(dataset, data_dir=data_dir)
    kg, _ = load_kg(path, types_dir=types_dir)
    return kg


class Queries(Sequence[int]):
    """1-n training queries ``(entity, relation, is_tail)`` with their true answers (CSR layout)."""

    def __init__(self, queries: torch.Tensor, offsets: torch.Tensor, answers: torch.Tensor):
        self.queries, self.offsets, self.answers = queries, offsets, answers

    @classmethod
    def build(cls, triples: torch.Tensor, num_relations: int, reciprocal: bool) -> Queries:
        h, r, t = triples.unbind(1)
        ones = torch.ones_like(h)
        if reciprocal:  # (h, r) -> t and (t, r + R) -> h, all tail queries
            parts = [torch.stack([h, r, ones, t], 1), torch.stack([t, r + num_relations, ones, h], 1)]
        else:  # (h, r, ?) tail queries and (?, r, t) head queries
            parts = [torch.stack([h, r, ones, t], 1), torch.stack([t, r, 0 * ones, h], 1)]
        rows = torch.unique(torch.cat(parts), dim=0)  # sorted by query, then answer
        keys, counts = torch.unique_consecutive(rows[:, :3], dim=0, return_counts=True)
        offsets = torch.zeros(len(keys) + 1, dtype=torch.int64)
        offsets[1:] = counts.cumsum(0)
        return cls(keys, offsets, rows[:, 3].contiguous())

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, i: int) -> int:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return i

    def collate(self, idx: list[int]) -> Batch:
        """Queries plus the multi-hot targets as (row, entity) index pairs."""
        index = torch.tensor(idx, dtype=torch.int64)
        starts = self.offsets[index]
        rows, cols = ragged_gather(self.answers, starts, self.offsets[index + 1] - starts)
        return {"query": self.queries[index], "target_rows": rows, "target_cols": cols}


class Indices(Sequence[int]):
    """Training triples addressed by index (the triples themselves stay in one tensor)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:  # type: ignore[override]
        if not 0 <= i < self.n:
            raise IndexError(i)
        return i


class Triples(Sequence[torch.Tensor]):
    """Held-out triples; each sample is one ``(3,)`` row."""

    def __init__(self, triples: torch.Tensor):
        self.triples = triples

    def __len__(self) -> int:
        return len(self.triples)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.triples[i]


def head_probabilities(triples: torch.Tensor, num_relations: int) -> torch.Tensor:
    """Bernoulli sampling (Wang et al. 2014): corrupt the head of relation r with tph / (tph + hpt)."""
    probs = torch.full((num_relations,), 0.5)
    for r in triples[:, 1].unique().tolist():
        rows = triples[triples[:, 1] == r]
        tph = len(rows) / len(rows[:, 0].unique())
        hpt = len(rows) / len(rows[:, 2].unique())
        probs[r] = tph / (tph + hpt)
    return probs


# -- model wrapper ------------------------------------------------------------------------------
class KGEScorer(nn.Module):
    """Routes every use of a KGE model through ``forward``, so DDP and FSDP hooks run.

    ``forward(op, *args)`` calls ``score_hrt``, ``score_t``, ``score_h`` or ``regularizer`` of the
    wrapped model. With ``reciprocal`` relations, head queries become tail queries on ``r + R``.
    """

    def __init__(self, kge: nn.Module, num_relations: int, reciprocal: bool):
        super().__init__()
        self.kge = kge
        self.num_relations, self.reciprocal = num_relations, reciprocal

    def forward(self, op: str, *args: Any, **kwargs: Any) -> torch.Tensor:
        if op == "score_h" and self.reciprocal:
            r, t = args[:2]
            return self.kge.score_t(t, r + self.num_relations, *args[2:], **kwargs)
        if op not in ("score_hrt", "score_t", "score_h", "regularizer"):
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


def build_scorer(spec: dict[str, Any]) -> KGEScorer:
    """The model a ``model_config()["model"]`` table describes."""
    from kelm.models.kge import KGE_MODELS, build_kge_model

    name = spec["name"]
    if name not in KGE_MODELS:
        raise ConfigError(f"task.model: unknown KGE model '{name}' (known: {', '.join(sorted(KGE_MODELS))})")
    kwargs = dict(spec.get("options") or {})
    if spec.get("dropout"):
        kwargs["dropout"] = spec["dropout"]
    rels = spec["num_relations"] * (2 if spec["reciprocal"] else 1)
    try:
        kge = build_kge_model(name, spec["num_entities"], rels, spec["dim"], **kwargs)
    except TypeError as err:
        raise ConfigError(f"task.model_options: model '{name}' does not accept these options ({err})") from None
    return KGEScorer(kge, spec["num_relations"], spec["reciprocal"])


# -- the task -----------------------------------------------------------------------------------
class LinkPredictionTask(Task):
    name = "link-prediction"
    monitor = "mrr"
    monitor_mode = "max"
    train_defaults = KGE_DEFAULTS
    sides = ("tail", "head")

    def __init__(self, cfg: LinkPredictionConfig, kg: KnowledgeGraph | None = None):
        self.cfg = cfg
        self.kg = kg if kg is not None else load_dataset(cfg.dataset, cfg.data_dir)
        self.tensors = TripleTensors.from_graph(self.kg)
        self.train_triples = self._split(cfg.train_split)
        self.valid_triples = self._split(cfg.valid_split) if cfg.valid_split else None
        self.test_triples = self._split(cfg.test_split) if cfg.test_split else None
        self.known = torch.cat(list(self.tensors.triples.values()))
        E, R = self.tensors.num_entities, self.tensors.num_relations
        with torch.device("meta"):
            build_scorer(self.model_spec())  # unknown model, odd dim or bad options fail here
        if cfg.training == "1-n":
            self.queries = Queries.build(self.train_triples, R, cfg.reciprocal)
        else:
            self.samples = self.train_triples
            if cfg.reciprocal:
                h, r, t = self.train_triples.unbind(1)
                self.samples = torch.cat([self.train_triples, torch.stack([t, r + R, h], 1)])
            bernoulli = cfg.training == "negative-sampling" and cfg.sampler == "bernoulli"
            self.head_prob = head_probabilities(self.train_triples, R) if bernoulli else None
        self._evaluator: Any = None
        self._last_ranks: Any = None
        self._num_entities = E

    def _split(self, split: str) -> torch.Tensor:
        triples = self.tensors.triples.get(split)
        if triples is None or len(triples) == 0:
            raise DataError(f"split '{split}' is empty or missing", self.cfg.dataset)
        return triples

    # -- model --------------------------------------------------------------------------------
    def model_spec(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "kind": "kge",
            "name": c.model,
            "dim": c.dim,
            "num_entities": self.tensors.num_entities,
            "num_relations": self.tensors.num_relations,
            "reciprocal": c.reciprocal,
            "dropout": c.dropout,
            "options": dict(c.model_options),
        }

    def build_model(self) -> nn.Module:
        return build_scorer(self.model_spec())

    def model_config(self) -> dict[str, Any]:
        return {"task": self.name, "model": self.model_spec()}

    # -- data ---------------------------------------------------------------------------------
    def train_data(self) -> Sequence[Any]:
        return self.queries if self.cfg.training == "1-n" else Indices(len(self.samples))

    def eval_data(self) -> Sequence[Any] | None:
        return None if self.valid_triples is None else Triples(self.valid_triples)

    def test_data(self) -> Sequence[Any] | None:
        return None if self.test_triples is None else Triples(self.test_triples)

    def collate(self, samples: list[Any], rng: BatchRandom | None = None) -> Batch:
        """Evaluation triples, 1-n queries, or triples with negatives drawn from ``rng``.

        The engine passes ``rng``, whose draws for a sample do not depend on the world size, so
        negative sampling is the same with one process or many; without it the global RNG is used."""
        if samples and isinstance(samples[0], torch.Tensor):
            return {"eval_triples": torch.stack(samples)}
        if self.cfg.training == "1-n":
            return self.queries.collate(samples)
        triples = self.samples[torch.tensor(samples, dtype=torch.int64)]
        if self.cfg.training == "1-vs-all":
            return {"triples": triples}
        return {"triples": triples, **self._negatives(triples, rng)}

    def _negatives(self, triples: torch.Tensor, rng: BatchRandom | None) -> Batch:
        """Negatives and sides to corrupt. Per-row negatives never repeat the true entity of the
        corrupted side (drawn from ``E - 1`` ids, those at or above it shifted up by one); shared
        negatives may hit it."""
        c, B, E = self.cfg, len(triples), self._num_entities
        if rng is None:
            rng = BatchRandom(torch.default_generator, B, 0, 1)
        if c.reciprocal:
            corrupt_head = torch.zeros(B, dtype=torch.bool)
        else:
            p_head = self.head_prob[triples[:, 1]] if self.head_prob is not None else 0.5
            corrupt_head = rng.rand() < p_head
        if c.sampler == "shared":
            return {"negatives": rng.shared_randint(E, c.num_negatives), "corrupt_head": corrupt_head}
        true = torch.where(corrupt_head, triples[:, 0], triples[:, 2])
        negatives = rng.randint(max(E - 1, 1), c.num_negatives)
        negatives += (negatives >= true[:, None]).long() if E > 1 else 0
        return {"negatives": negatives, "corrupt_head": corrupt_head}

    def batch_weight(self, batch: Batch) -> int:
        if "eval_triples" in batch:
            return len(batch["eval_triples"]) * len(self.sides)
        return len(batch["query"] if "query" in batch else batch["triples"])

    def tokens(self, batch: Batch) -> int:
        if "eval_triples" in batch:
            return len(batch["eval_triples"])
        return self.batch_weight(batch)

    # -- losses -------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if "query" in batch:
            loss, (h, r, t) = self._loss_1n(model, batch)
        elif "negatives" in batch:
            loss, (h, r, t) = self._loss_ns(model, batch)
        else:
            loss, (h, r, t) = self._loss_1vsall(model, batch)
        c = self.cfg
        if c.regularizer != "none" and c.regularizer_weight > 0:
            reg = model("regularizer", h, r, t, c.regularizer, c.regularizer_p)
            return loss + c.regularizer_weight * reg, {}
        return loss, {}

    def _loss_1vsall(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Cross-entropy of each triple's true tail (and, without reciprocal relations, head) among all entities."""
        h, r, t = batch["triples"].unbind(1)
        eps = self.cfg.label_smoothing
        loss = F.cross_entropy(model("score_t", h, r).float(), t, label_smoothing=eps)
        if not self.cfg.reciprocal:
            loss = loss + F.cross_entropy(model("score_h", r, t).float(), h, label_smoothing=eps)
        return loss, (h, r, t)

    def _scores(
        self,
        model: nn.Module,
        h: torch.Tensor,
        r: torch.Tensor,
        t: torch.Tensor,
        cands: torch.Tensor | None,
        corrupt_head: torch.Tensor,
    ) -> torch.Tensor:
        """``(B, C)`` float scores with the tail, or where ``corrupt_head`` the head, replaced by each
        candidate: all entities (``cands`` None), a shared ``(C,)`` set or per-row ``(B, C)`` sets."""
        if not bool(corrupt_head.any()):
            return model("score_t", h, r, cands).float()
        if bool(corrupt_head.all()):
            return model("score_h", r, t, cands).float()
        per_row = cands is not None and cands.dim() == 2
        width = self._num_entities if cands is None else cands.shape[-1]
        out = torch.empty(len(h), width, device=h.device)
        for rows, op, a, b in ((~corrupt_head, "score_t", h, r), (corrupt_head, "score_h", r, t)):
            out[rows] = model(op, a[rows], b[rows], cands[rows] if per_row else cands).float()
        return out

    def _loss_1n(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """BCE or CE against the multi-hot answers (`kelm.kge.losses`: no dense target is built)."""
        from kelm.kge.losses import one_to_n_loss

        q, rows, cols = batch["query"], batch["target_rows"], batch["target_cols"]
        e, r, is_tail = q[:, 0], q[:, 1], q[:, 2].bool()
        logits = self._scores(model, e, r, e, None, ~is_tail)
        loss = one_to_n_loss(logits, rows, cols, self.cfg.loss_name, self.cfg.label_smoothing)
        # regularise over the true triples of the batch, in the direction each query was asked
        qe, qr, tail = e[rows], r[rows], is_tail[rows]
        h = torch.where(tail, qe, cols)
        t = torch.where(tail, cols, qe)
        return loss, (h, qr, t)

    def _loss_ns(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        triples, neg, corrupt_head = batch["triples"], batch["negatives"], batch["corrupt_head"]
        h, r, t = triples.unbind(1)
        if neg.dim() == 1:  # shared: every triple meets the same N entities on the corrupted side
            pos = model("score_hrt", h, r, t).float()
            neg_scores = self._scores(model, h, r, t, neg, corrupt_head)
        else:  # the true entity rides along as candidate 0, so one batched matmul scores all
            true = torch.where(corrupt_head, h, t)
            scores = self._scores(model, h, r, t, torch.cat([true[:, None], neg], 1), corrupt_head)
            pos, neg_scores = scores[:, 0], scores[:, 1:]
        return self._contrast(pos, neg_scores), (h, r, t)

    def _contrast(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        name = c.loss_name
        if name == "margin":
            return F.relu(c.margin - pos[:, None] + neg).mean()
        if name == "softplus":
            return (F.softplus(-pos) + F.softplus(neg).mean(1)).mean()
        # self-adversarial (Sun et al. 2019): negatives weighted by their detached softmax
        weights = F.softmax(c.adversarial_temperature * neg, dim=1).detach()
        pos_term = -F.logsigmoid(c.margin + pos)
        neg_term = -(weights * F.logsigmoid(-c.margin - neg)).sum(1)
        return ((pos_term + neg_term) / 2).mean()

    # -- evaluation ---------------------------------------------------------------------------
    def evaluator(self) -> Any:
        """The filtered ranker over all known triples (built once; it moves its index per device)."""
        from kelm.kge.evaluation import FilteredRankEvaluator

        if self._evaluator is None:
            self._evaluator = FilteredRankEvaluator(self.known, self._num_entities, self.cfg.eval_memory_mb)
        return self._evaluator

    def scoring(self, model: nn.Module) -> Scoring:
        return Scoring(model, self._num_entities, self.tensors.num_relations, self.cfg.dim)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        """Filtered rank metrics as means over ranking queries (both sides of every triple)."""
        if not batches:
            return {k: 0.0 for k in RANK_METRICS}
        triples = torch.cat([b["eval_triples"] for b in batches])
        result = self.evaluator().rank(self.scoring(model), triples, sides=self.sides)
        self._last_ranks = result
        metrics = result.metrics()
        return {k: float(metrics[k]) for k in RANK_METRICS}

    def eval_details(self) -> Any:
        """This rank's ranks, sides and relations of the last evaluation."""
        return self._last_ranks

    def breakdown(self, details: list[Any]) -> dict[str, Any]:
        """``per_relation``: MRR, MR, Hits@k, query count and label per relation id."""
        from kelm.kge.evaluation import RankingResult

        parts = [d for d in details if d is not None]
        merged = RankingResult(*(torch.cat([getattr(p, f) for p in parts]) for f in ("ranks", "sides", "relations")))
        ids = list(self.tensors.relation_ids)
        table = merged.per_relation(ids)
        labelled = {rid: {"label": self.kg.relations[rid].label or rid, **m} for rid, m in table.items()}
        return {"per_relation": labelled}

    # -- artifacts ----------------------------------------------------------------------------
    def save_artifacts(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        ents = [(e, self.kg.entities[e].label) for e in self.tensors.entity_ids]
        rels = [(r, self.kg.relations[r].label) for r in self.tensors.relation_ids]
        write_text_atomic(folder / ENTITIES_FILE, vocab_tsv(ents))
        write_text_atomic(folder / RELATIONS_FILE, vocab_tsv(rels))


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def vocab_tsv(items: list[tuple[str, str | None]]) -> str:
    """``index<TAB>id<TAB>label`` lines under a header; an entity without a label repeats its id."""
    lines = ["index\tid\tlabel"] + [
        f"{i}\t{_clean(k)}\t{_clean(label) or _clean(k)}" for i, (k, label) in enumerate(items)
    ]
    return "\n".join(lines) + "\n"


def read_vocab(path: Path) -> tuple[list[str], list[str]]:
    """Ids and labels of a vocabulary written by `vocab_tsv`, in index order."""
    if not path.is_file():
        raise DataError("missing vocabulary file; not a link-prediction model folder", path)
    ids, labels = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()[1:], start=2):
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] != str(len(ids)):
            raise DataError("malformed vocabulary line", path, n)
        ids.append(parts[1])
        labels.append(parts[2])
    return ids, labels


__all__ = [
    "KGEScorer",
    "LinkPredictionConfig",
    "LinkPredictionTask",
    "Queries",
    "build_scorer",
    "load_dataset",
    "read_vocab",
]
