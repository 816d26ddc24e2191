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

The task composes pieces of `kelm.kge`: a training regime (`kelm.kge.training`: `OneToN`,
`OneVsAll`, `NegativeSampling` with a `kelm.kge.sampling.NegativeSampler`), the scorer, and the
filtered ranking shared with text-based completion (`kelm.kge.ranking`).

Valid/test triples naming an entity or relation absent from train (WN18RR, FB15k-237) are kept
by default, as LibKGE does: the test metrics rank every test triple, and ``test_without_unseen``
in metrics.json ranks only those whose head, relation and tail occur in train. ``unseen = "drop"``
removes them instead (PyKEEN); ``test_unseen`` says which policy ran and how many triples it met.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from kelm.artifacts import read_model_spec
from kelm.config import Section
from kelm.errors import ConfigError, DataError
from kelm.kg.datasets import load_graph_report
from kelm.kg.model import KnowledgeGraph
from kelm.kg.tensors import TripleTensors
from kelm.kg.unseen import apply_unseen_policy, describe_unseen, seen_mask
from kelm.kg.vocab import ENTITIES_FILE, RELATIONS_FILE, grown_order, read_vocab, vocabulary_change, write_vocabularies
from kelm.kge.distill import ScoreTeacher
from kelm.kge.folder import load_kge
from kelm.kge.incremental import freeze_rows, seed_rows
from kelm.kge.memory import check_tables_fit
from kelm.kge.plan import ShardedEntityPlan
from kelm.kge.ranking import RANK_METRICS, Ranking, merge_rankings, metric_values, per_relation_report
from kelm.kge.samples import Triples
from kelm.kge.sampling import NegativeSampler
from kelm.kge.scorer import Scoring, build_scorer
from kelm.kge.sharded import RowShards, pad_to_longest
from kelm.kge.training import MODES, NS_LOSSES, ONE_N_LOSSES, NegativeSampling, OneToN, OneVsAll, TrainingRegime
from kelm.train.config import KGE_DEFAULTS, TrainConfig
from kelm.train.data import BatchRandom
from kelm.train.distributed import env_rank
from kelm.train.parallel import ParallelPlan
from kelm.train.sparse_grads import row_sparse_embedding_grads
from kelm.train.task import Batch, Task


class TeacherFields(Section):
    """Distillation from another model of the same graph (`kelm.kge.distill`)."""

    teacher: str | None = Field(
        None,
        description="a link-prediction, text-kgc or frozen-text-kgc run on the same graph whose score "
        "distributions over all entities the model learns",
    )
    distill_weight: float = Field(0.5, ge=0, le=1, description="weight of the teacher's scores (1 - it: the data)")
    distill_temperature: float = Field(1.0, gt=0)
    teacher_cache_mb: float = Field(512.0, ge=0, description="memory for the teacher's rows of training queries")


class LinkPredictionConfig(TeacherFields):
    """``[task]`` for ``link-prediction``."""

    name: Literal["link-prediction"] = "link-prediction"
    dataset: str = Field(..., min_length=1, description="registered data-set name or a folder/file of triples")
    data_dir: str | None = None
    unseen: Literal["keep", "drop"] = Field(
        "keep",
        description="valid/test triples naming an entity or relation absent from train: keep them "
        "(LibKGE; also reported without them) or drop them (PyKEEN)",
    )
    skip_bad: bool = Field(False, description="skip and count malformed lines instead of failing")
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
    shard_entities: bool = Field(
        False,
        description="shard the entity table row-wise over the processes (--nproc N, strategy ddp, "
        "negative-sampling training): each holds 1/N of the rows and of their optimizer state",
    )
    # incremental training
    init_from: str | None = Field(
        None,
        description="a trained link-prediction run or model folder whose embeddings start this run; "
        "ids new in the data set are appended after the old ones and start fresh",
    )
    train_init: bool = Field(
        False, description="also train the embeddings taken from init_from (default: they stay as trained)"
    )
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
        if self.shard_entities and self.init_from:
            raise ValueError("init_from (incremental training) does not combine with shard_entities yet")
        if self.shard_entities and self.training != "negative-sampling":
            raise ValueError(
                f"shard_entities trains with training = 'negative-sampling', not '{self.training}' "
                "(1-N and 1-vs-all score every entity of the table in each step)"
            )
        return self

    @property
    def loss_name(self) -> str:
        return self.loss or {"1-n": "bce", "1-vs-all": "ce"}.get(self.training, "self-adversarial")


# -- data -------------------------------------------------------------------------------------


def build_regime(
    cfg: LinkPredictionConfig, train_triples: torch.Tensor, num_entities: int, num_relations: int
) -> TrainingRegime:
    """The training regime ``cfg.training`` names, over these training triples."""
    E, R, rec = num_entities, num_relations, cfg.reciprocal
    if cfg.training == "1-n":
        return OneToN(train_triples, E, R, rec, cfg.loss_name, cfg.label_smoothing)
    if cfg.training == "1-vs-all":
        return OneVsAll(train_triples, E, R, rec, cfg.label_smoothing)
    sampler = NegativeSampler(cfg.sampler, E, cfg.num_negatives, rec, train_triples, R)
    loss, margin, temperature = cfg.loss_name, cfg.margin, cfg.adversarial_temperature
    return NegativeSampling(train_triples, sampler, loss, margin, temperature, collective=cfg.shard_entities)


def load_graph_teacher(cfg: TeacherFields, tensors: TripleTensors) -> ScoreTeacher | None:
    """The frozen teacher ``cfg.teacher`` names, checked against this graph's vocabularies."""
    if not cfg.teacher:
        return None
    from kelm.kgc.teacher import load_score_teacher

    return load_score_teacher(cfg.teacher, tensors.entity_ids, tensors.relation_ids, cfg.teacher_cache_mb)


def distill_loss(
    model: nn.Module,
    teacher: ScoreTeacher,
    batch: Batch,
    num_relations: int,
    reciprocal: bool,
    temperature: float,
    columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """The teacher-score loss over the batch's queries (1-n: its queries; else its triples as tail
    queries, and as head queries too without reciprocal relations), over ``columns`` if given."""
    from kelm.kge.distill import score_kd

    if "query" in batch:
        q = batch["query"]
        e, r, tail = q[:, 0], q[:, 1], q[:, 2]
    else:
        h, r, t = batch["triples"].unbind(1)
        e, tail = h, torch.ones_like(h)
        if not reciprocal:
            e, r, tail = torch.cat([h, t]), torch.cat([r, r]), torch.cat([tail, torch.zeros_like(t)])
    return score_kd(model, teacher, e, r, tail, num_relations, temperature, columns)


class LinkPredictionTask(Task):
    config_class = LinkPredictionConfig
    #: The entities distillation compares score distributions over (None: all of them).
    distill_columns: torch.Tensor | None = None
    uses_batch_random = True
    name = "link-prediction"
    monitor = "mrr"
    monitor_mode = "max"
    train_defaults = KGE_DEFAULTS
    sides = ("tail", "head")
    #: What `apply_unseen_policy` found; None (subclasses with their own splits) skips `without_unseen`.
    unseen_info: dict[str, Any] | None = None
    #: The built model's entity table is sharded over several ranks (`build_model`).
    sharded: bool = False

    def __init__(self, cfg: LinkPredictionConfig, kg: KnowledgeGraph | None = None):
        self.cfg = cfg
        report = None
        if kg is None:
            kg, report = load_graph_report(cfg.dataset, cfg.data_dir, skip_bad=cfg.skip_bad, unseen="keep")
        self.kg = kg
        self.init_spec: dict[str, Any] | None = None
        orders = self._grown_orders() if cfg.init_from else (None, None)
        held_out = [x for x in (cfg.valid_split, cfg.test_split) if x]
        self.unseen_info = apply_unseen_policy(self.kg, cfg.unseen, cfg.train_split, held_out, report)
        note = describe_unseen(self.unseen_info)
        if note and env_rank() == 0:
            from kelm.progress import console

            console.print(f"{cfg.dataset}: {note}", highlight=False, soft_wrap=True)
        self._index_splits(*orders)
        E, R = self.tensors.num_entities, self.tensors.num_relations
        with torch.device("meta"):
            meta = build_scorer(self.model_spec())  # unknown model, odd dim or bad options fail here
        self._table_shape = tuple(meta.kge.entity.weight.shape)
        self._other_elements = sum(p.numel() for p in meta.parameters()) - meta.kge.entity.weight.numel()
        self.regime: TrainingRegime = build_regime(cfg, self.train_triples, E, R)
        self.teacher = load_graph_teacher(cfg, self.tensors)

    def _grown_orders(self) -> tuple[list[str], list[str]]:
        """The vocabularies of ``init_from``'s model, grown by the ids new in this graph."""
        cfg = self.cfg
        folder, spec = read_model_spec(str(cfg.init_from), "kge")
        for key in ("name", "dim", "reciprocal"):
            ours = {"name": cfg.model, "dim": cfg.dim, "reciprocal": cfg.reciprocal}[key]
            if spec.get(key) != ours:
                raise ConfigError(
                    f"task.init_from: {folder} holds a model with {key} {spec.get(key)!r}, this run asks for {ours!r}"
                )
        self.init_spec = spec
        entities = grown_order(read_vocab(folder / ENTITIES_FILE)[0], self.kg.entities, "entity", cfg.dataset)
        relations = grown_order(read_vocab(folder / RELATIONS_FILE)[0], self.kg.relations, "relation", cfg.dataset)
        return entities, relations

    def _index_splits(self, entity_ids: list[str] | None = None, relation_ids: list[str] | None = None) -> None:
        """Tensors of the graph, its splits and the filtered ranking over every known triple."""
        cfg = self.cfg
        self.tensors = TripleTensors.from_graph(self.kg, entity_ids, relation_ids)
        splits = (cfg.train_split, cfg.valid_split, cfg.test_split)
        self.train_triples, self.valid_triples, self.test_triples = (self._split(s) if s else None for s in splits)
        self.known = torch.cat(list(self.tensors.triples.values()))
        self._num_entities = self.tensors.num_entities
        self.ranking = Ranking(self.known, self._num_entities, cfg.eval_memory_mb, self.sides)
        self._last_ranks: Any = None

    def use_training_triples(self, triples: torch.Tensor) -> None:
        """Train on ``triples`` (a part of the graph, e.g. one federated client's) instead of the
        training split; the vocabularies and the filter of known triples stay those of the graph."""
        self.train_triples = triples
        self.regime = build_regime(self.cfg, triples, self.tensors.num_entities, self.tensors.num_relations)

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

    @property
    def shard_entities(self) -> bool:
        """``[task] shard_entities`` (tasks built on this one without that key: False)."""
        return bool(getattr(self.cfg, "shard_entities", False))

    def configure(self, train: TrainConfig) -> None:
        """Refuse, before anything is allocated, tables that cannot fit in free memory (a sharded
        entity table: this rank's rows), and weight decay that would move embeddings meant to stay
        as trained."""
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        shards = RowShards.of_job(self._table_shape[0]).world if self.shard_entities else 1
        check_tables_fit(self._table_shape, self._other_elements, train.optimizer, shards=shards, processes=local)
        if self.cfg.init_from and not self.cfg.train_init and train.weight_decay > 0:
            raise ConfigError(
                "train.weight_decay would shrink the embeddings taken from task.init_from, which stay as "
                "trained; set it to 0 or task.train_init = true"
            )

    def build_model(self) -> nn.Module:
        """A fresh model (with ``shard_entities`` in a job of several processes, holding this rank's
        rows of the entity table only: `kelm.kge.sharded`), or with ``init_from`` one whose old rows
        are that model's (kept fixed unless ``train_init``)."""
        shards = RowShards.of_job(self.tensors.num_entities) if self.shard_entities else None
        self.sharded = shards is not None and shards.world > 1
        model = build_scorer(self.model_spec(), shards)
        if self.cfg.init_from:
            old, _ = load_kge(str(self.cfg.init_from))
            rows = seed_rows(model, old)
            if not self.cfg.train_init:
                freeze_rows(model, rows)
        if not self.sharded:  # lookups write only the rows they use (exact; `kelm.train.sparse_grads`)
            row_sparse_embedding_grads(model)
        return model

    def parallel_plan(self) -> ParallelPlan:
        return ShardedEntityPlan() if self.shard_entities else ParallelPlan()

    def model_config(self) -> dict[str, Any]:
        return {"task": self.name, "model": self.model_spec()}

    # -- data ---------------------------------------------------------------------------------
    def train_data(self) -> Sequence[Any]:
        return self.regime.samples()

    def eval_data(self) -> Sequence[Any] | None:
        return None if self.valid_triples is None else Triples(self.valid_triples)

    def test_data(self) -> Sequence[Any] | None:
        return None if self.test_triples is None else Triples(self.test_triples)

    def collate(self, samples: list[Any], rng: BatchRandom | None = None) -> Batch:
        """Evaluation triples, or the regime's training batch (``rng``: world-size-free draws)."""
        if samples and isinstance(samples[0], torch.Tensor):
            return {"eval_triples": torch.stack(samples)}
        return self.regime.collate(samples, rng)

    def batch_weight(self, batch: Batch) -> int:
        if "eval_triples" in batch:
            return len(batch["eval_triples"]) * len(self.sides)
        return self.regime.batch_weight(batch)

    def tokens(self, batch: Batch) -> int:
        if "eval_triples" in batch:
            return len(batch["eval_triples"])
        return self.batch_weight(batch)

    # -- loss ---------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The regime's loss, plus the regularizer over the batch's true triples."""
        loss, (h, r, t) = self.regime.loss(model, batch)
        c = self.cfg
        loss = self.with_teacher(loss, model, batch)
        if c.regularizer != "none" and c.regularizer_weight > 0:
            reg = model("regularizer", h, r, t, c.regularizer, c.regularizer_p)
            return loss + c.regularizer_weight * reg, {}
        return loss, {}

    def with_teacher(self, loss: torch.Tensor, model: nn.Module, batch: Batch) -> torch.Tensor:
        """``loss`` mixed with the teacher-score loss over the same queries, when there is a teacher."""
        if self.teacher is None:
            return loss
        c, R, reciprocal = self.cfg, self.tensors.num_relations, self.regime.reciprocal
        kd = distill_loss(model, self.teacher, batch, R, reciprocal, c.distill_temperature, self.distill_columns)
        return (1 - c.distill_weight) * loss + c.distill_weight * kd

    # -- evaluation ---------------------------------------------------------------------------
    def evaluator(self) -> Any:
        """The filtered ranker over all known triples (built once; it moves its index per device)."""
        return self.ranking.evaluator

    def scoring(self, model: nn.Module) -> Scoring:
        return Scoring(model, self._num_entities, self.tensors.num_relations, self.cfg.dim)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        """Filtered rank metrics as means over ranking queries (both sides of every triple)."""
        if not batches and not self.sharded:
            return metric_values(None)
        triples = torch.cat([b["eval_triples"] for b in batches]) if batches else torch.zeros(0, 3, dtype=torch.long)
        if self.sharded:  # every rank scores as many queries (each chunk is collective); padding dropped
            padded, real = pad_to_longest(triples)
            result = self.ranking.rank(self.scoring(model), padded).subset(real.repeat(len(self.sides)))
            if not batches:
                self._last_ranks = None
                return metric_values(None)
        else:
            result = self.ranking.rank(self.scoring(model), triples)
        if self.unseen_info is not None:  # ranks run side by side, each over all triples
            seen = seen_mask(self.train_triples, triples.cpu(), self._num_entities, self.tensors.num_relations)
            result.seen = seen.repeat(len(self.sides))
        self._last_ranks = result
        return metric_values(result)

    def eval_details(self) -> Any:
        """This rank's ranks, sides and relations of the last evaluation."""
        return self._last_ranks

    def breakdown(self, details: list[Any]) -> dict[str, Any]:
        """``per_relation``: MRR, MR, Hits@k, query count and label per relation id; ``all`` and
        ``without_unseen``: the metrics over every triple and over those whose head, relation and
        tail occur in train, with their ``triples`` count; ``unseen``: the policy and its counts."""
        merged = merge_rankings(details)
        out = per_relation_report(merged, list(self.tensors.relation_ids), lambda r: self.kg.relations[r].label)
        if self.unseen_info is not None and merged.seen is not None:
            for name, subset in (("all", merged), ("without_unseen", merged.subset(merged.seen))):
                out[name] = metric_values(subset) | {"triples": len(subset.ranks) // len(self.sides)}
            out["unseen"] = self.unseen_info
        return out

    # -- resuming -----------------------------------------------------------------------------
    def resume_state(self) -> dict[str, Any]:
        """The vocabularies, so a resume can tell that the data changed under the checkpoint."""
        return {"entities": list(self.tensors.entity_ids), "relations": list(self.tensors.relation_ids)}

    def check_resume(self, state: dict[str, Any], ckpt: Path) -> None:
        """Refuse a checkpoint whose vocabulary differs from this data set's: ids would point at
        other rows. A grown graph trains incrementally instead (``init_from``)."""
        for what, key, current in (
            ("entity", "entities", self.tensors.entity_ids),
            ("relation", "relations", self.tensors.relation_ids),
        ):
            if key not in state:
                continue
            change = vocabulary_change(state[key], list(current), what)
            if change is None:
                continue
            hint = (
                "; to add the new ids to the trained model, train incrementally: "
                "kelm kge train --resume RUN --dataset DATA --out NEW_FOLDER"
                if "grew" in change
                else ""
            )
            raise ConfigError(f"cannot resume {ckpt} on {self.cfg.dataset}: {change} since the checkpoint{hint}")

    # -- artifacts ----------------------------------------------------------------------------
    def save_artifacts(self, folder: Path) -> None:
        write_vocabularies(folder, self.kg, self.tensors.entity_ids, self.tensors.relation_ids)


__all__ = [
    "MODES",
    "NS_LOSSES",
    "ONE_N_LOSSES",
    "RANK_METRICS",
    "LinkPredictionConfig",
    "LinkPredictionTask",
    "build_regime",
]
