"""Text-based KG completion (SimKGC-style): a bi-encoder ranks entities from their descriptions.

A query "head: description [SEP] relation" and a candidate "entity: description" are embedded by
one transformer (MiniLM by default; mean pooling, L2 norm) and scored by their cosine. Training
uses reciprocal relations (head prediction is tail prediction of "inverse of <relation>") and
InfoNCE (`kelm.kgc.infonce`) over in-batch, pre-batch and self negatives with a learnable
temperature and an additive margin; negatives that are known training triples are masked out.
With ``--nproc N`` the batch's tail embeddings are gathered from every rank with gradient, so
each query meets the whole global batch as negatives, exactly as one process would.

Evaluation embeds every entity from its text once and ranks with the same filtered ranker as
link prediction, so entities never seen in training (``inductive``) are ranked like any other.
Optional: ``kepler`` adds a TransE loss over the text-derived embeddings and an MLM loss on the
descriptions (weight ``kepler_weight``); ``hybrid_kge`` mixes in a trained KGE model's scores
(`kelm.kge.mixing`). Its text weight ``alpha``, unless given, is chosen on the validation split
from ``alpha_grid`` at every validation and applied to the test split; the metrics then also hold
``alpha``, ``structure/*`` (α = 0) and ``text/*`` (α = 1) for the same queries.

``entity_text = "types"`` builds entity texts from the labels of their types (``types.json`` of
the data set's type folder, e.g. ``codex-types`` for CoDEx) instead of their descriptions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import Field, field_validator
from torch import nn

from kelm.config import Section
from kelm.errors import ConfigError, DataError
from kelm.kg.datasets import load_graph
from kelm.kg.model import KnowledgeGraph
from kelm.kg.tensors import TripleTensors
from kelm.kg.vocab import write_vocabularies
from kelm.kgc.infonce import (
    PreBatchQueue,
    contrastive_loss,
    gather_ids,
    gather_with_grad,
    known_answer_mask,
    triple_keys,
    world_size,
)
from kelm.kgc.text_kgc import (
    ENCODER_DIR,
    KGCTexts,
    TextScoring,
    entity_texts,
    prefixed,
    relation_texts,
    transe_loss,
    type_texts,
)
from kelm.kge.ranking import RANK_METRICS, Ranking, merge_rankings, per_relation_report
from kelm.kge.samples import Indices
from kelm.train.config import FINETUNE_DEFAULTS
from kelm.train.data import BatchRandom
from kelm.train.task import Batch, Task


class TextKGCConfig(Section):
    """``[task]`` for ``text-kgc``."""

    name: Literal["text-kgc"] = "text-kgc"
    dataset: str = Field(..., min_length=1, description="registered data-set name or a folder/file of triples")
    data_dir: str | None = None
    # encoder
    model: str = Field("minilm", description="minilm, tiny-bert, a checkpoint folder or a cached hub id")
    hidden_size: int = Field(64, ge=8, description="tiny-bert only")
    num_layers: int = Field(2, ge=1, description="tiny-bert only")
    num_heads: int = Field(2, ge=1, description="tiny-bert only")
    max_length: int = Field(64, ge=8, description="tokens per query or candidate text")
    entity_text: Literal["description", "types"] = Field(
        "description", description="entity text: 'label: description', or its types' labels"
    )
    types_dir: str | None = Field(None, description="folder or types.json of type labels (entity_text = 'types')")
    # loss
    init_temperature: float = Field(0.05, gt=0, le=1)
    margin: float = Field(0.02, ge=0, description="additive margin subtracted from the positive cosine")
    pre_batch: int = Field(2, ge=0, description="batches of detached tail embeddings kept as negatives")
    pre_batch_weight: float = Field(0.5, ge=0, description="multiplies the pre-batch logits")
    self_negatives: bool = True
    gather_negatives: bool = Field(True, description="with several processes, negatives from the global batch")
    # KEPLER-style joint objective
    kepler: bool = False
    kepler_weight: float = Field(0.5, ge=0, description="lambda: loss = infonce + lambda (transe + mlm)")
    kepler_margin: float = Field(1.0, gt=0, description="TransE gamma over the unit-length entity embeddings")
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    # hybrid scoring and inductive split
    hybrid_kge: str | None = Field(None, description="run folder of a `kelm kge train` model to mix in")
    alpha: float | None = Field(
        None, ge=0, le=1, description="alpha * text + (1 - alpha) * structure; unset: chosen on valid"
    )
    alpha_grid: list[float] = Field(
        [round(0.1 * i, 1) for i in range(11)], min_length=1, description="alphas tried on the validation split"
    )
    inductive: float | None = Field(None, gt=0, lt=1, description="share of entities held out of training")
    inductive_seed: int = 0
    # evaluation
    encode_batch_size: int = Field(128, ge=1)
    eval_memory_mb: float = Field(256.0, gt=0)
    train_split: str = "train"
    valid_split: str | None = "valid"
    test_split: str | None = "test"

    @field_validator("alpha_grid")
    @classmethod
    def _grid_in_unit_interval(cls, grid: list[float]) -> list[float]:
        bad = [a for a in grid if not 0 <= a <= 1]
        if bad:
            raise ValueError(f"every alpha must be in [0, 1], got {bad}")
        return sorted(set(grid))


class _Held(Sequence[tuple[torch.Tensor, str]]):
    """Held-out triples tagged with their split, so evaluation knows valid from test."""

    def __init__(self, triples: torch.Tensor, split: str):
        self.triples, self.split = triples, split

    def __len__(self) -> int:
        return len(self.triples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.triples[i], self.split


def _type_labels(cfg: TextKGCConfig) -> dict[str, str]:
    """``type id -> label`` for ``entity_text = "types"``: ``types_dir``, else the registered
    data set's type folder, else the data-set folder itself."""
    from kelm.kg.io import read_type_labels
    from kelm.kg.io.codex import TYPE_TEXT

    source: Path | None = Path(cfg.types_dir) if cfg.types_dir else None
    if source is None and not Path(cfg.dataset).exists():
        from kelm.data import resolve_types

        source = resolve_types(cfg.dataset, data_dir=cfg.data_dir)
    if source is None:
        source = Path(cfg.dataset) if Path(cfg.dataset).is_dir() else None
    file = source / TYPE_TEXT if source is not None and source.suffix != ".json" else source
    if file is None or not file.is_file():
        where = f"{file} not found" if file is not None else f"no type folder for {cfg.dataset}"
        raise ConfigError(f"task.entity_text = 'types': {where} ({TYPE_TEXT} with type labels); set task.types_dir")
    return read_type_labels(file)


class TextKGCTask(Task):
    config_class = TextKGCConfig
    uses_batch_random = True
    name = "text-kgc"
    monitor = "mrr"
    monitor_mode = "max"
    train_defaults = FINETUNE_DEFAULTS
    sides = ("tail", "head")

    def __init__(self, cfg: TextKGCConfig, kg: KnowledgeGraph | None = None):
        from kelm.lm.hf import load_tokenizer
        from kelm.tasks.finetune import is_main_process

        self.cfg = cfg
        kg = kg if kg is not None else load_graph(cfg.dataset, cfg.data_dir)
        self.unseen: frozenset[str] = frozenset()
        if cfg.inductive:
            from kelm.kgc.inductive import inductive_split

            split = inductive_split(kg, cfg.inductive, cfg.inductive_seed, cfg.train_split)
            kg, self.unseen = split.kg, split.unseen
        self.kg = kg
        self.tensors = TripleTensors.from_graph(kg)
        self.train_triples = self._split(cfg.train_split)
        self.valid_triples = self._split(cfg.valid_split) if cfg.valid_split else None
        self.test_triples = self._split(cfg.test_split) if cfg.test_split else None
        self.known = torch.cat(list(self.tensors.triples.values()))
        self.num_entities, self.num_relations = self.tensors.num_entities, self.tensors.num_relations
        self.use_training_triples(self.train_triples)
        self.tokenizer = load_tokenizer(cfg.model)
        ids, warn = self.tensors.entity_ids, is_main_process()
        if cfg.entity_text == "types":
            ents = type_texts(kg, ids, _type_labels(cfg), warn=warn)
        else:
            ents = entity_texts(kg, ids, cfg.max_length, warn=warn)
        self.texts = KGCTexts(self.tokenizer, ents, relation_texts(kg, self.tensors.relation_ids), cfg.max_length)
        self.queue = PreBatchQueue(cfg.pre_batch)
        self.structural = None
        self.alpha = cfg.alpha  # the hybrid's text weight: given, or chosen at each validation
        self._last_split: str | None = None
        if cfg.hybrid_kge and cfg.alpha is None and not cfg.valid_split:
            raise ConfigError("task.alpha: with hybrid_kge and no valid_split, alpha cannot be chosen; give it")
        if cfg.hybrid_kge:
            from kelm.kge.mixing import load_structural

            self.structural = load_structural(cfg.hybrid_kge, self.tensors.entity_ids, self.tensors.relation_ids)
        self._special = torch.zeros(len(self.tokenizer), dtype=torch.bool)
        self._special[[i for i in self.tokenizer.all_special_ids if i < len(self._special)]] = True
        self.ranking = Ranking(self.known, self.num_entities, cfg.eval_memory_mb, self.sides)
        self._last_ranks: Any = None
        self._encoder_config: Any = None

    def _split(self, split: str) -> torch.Tensor:
        triples = self.tensors.triples.get(split)
        if triples is None or len(triples) == 0:
            raise DataError(f"split '{split}' is empty or missing", self.cfg.dataset)
        return triples

    # -- model ----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from kelm.kgc.encoders import BiEncoder, build_encoder

        c = self.cfg
        sizes = {"hidden_size": c.hidden_size, "num_layers": c.num_layers, "num_heads": c.num_heads}
        encoder = build_encoder(c.model, self.tokenizer, sizes, 512, c.kepler)
        self._encoder_config = encoder.config
        return BiEncoder(encoder, c.kepler, 2 * self.num_relations, c.init_temperature)

    def model_config(self) -> dict[str, Any]:
        c = self.cfg
        spec = {
            "kind": "text-kgc",
            "encoder": c.model,
            "kepler": c.kepler,
            "num_entities": self.num_entities,
            "num_relations": self.num_relations,
            "max_length": c.max_length,
            "hybrid_kge": str(Path(c.hybrid_kge).resolve()) if c.hybrid_kge else None,
            "alpha": self.alpha,
        }
        return {"task": self.name, "model": spec}

    # -- data -----------------------------------------------------------------------------------
    def use_training_triples(self, triples: torch.Tensor) -> None:
        """Train on ``triples`` (the training split, or one federated client's part of it): the
        samples with their reciprocals, and the keys of the in-batch negatives to mask."""
        E, R = self.num_entities, self.num_relations
        self.train_triples = triples
        h, r, t = triples.unbind(1)
        self.samples = torch.cat([triples, torch.stack([t, r + R, h], 1)])
        s_h, s_r, s_t = self.samples.unbind(1)
        self.train_keys = torch.unique(triple_keys(s_h, s_r, s_t, E, 2 * R))  # sorted

    def train_data(self) -> Sequence[Any]:
        return Indices(len(self.samples))

    def eval_data(self) -> Sequence[Any] | None:
        return None if self.valid_triples is None else _Held(self.valid_triples, "valid")

    def test_data(self) -> Sequence[Any] | None:
        return None if self.test_triples is None else _Held(self.test_triples, "test")

    def collate(self, samples: list[Any], rng: BatchRandom | None = None) -> Batch:
        """Evaluation triples, or training triples with tokenised queries and candidates (tails,
        then heads for self-negatives) and, with ``kepler``, masked descriptions drawn from ``rng``."""
        if samples and isinstance(samples[0], tuple):
            return {"eval_triples": torch.stack([row for row, _ in samples]), "eval_split": samples[0][1]}
        if samples and isinstance(samples[0], torch.Tensor):
            return {"eval_triples": torch.stack(samples)}
        triples = self.samples[torch.tensor(samples, dtype=torch.int64)]
        h, r, t = (x.tolist() for x in triples.unbind(1))
        cands = t + h if self.cfg.self_negatives or self.cfg.kepler else t
        batch: Batch = {"triples": triples}
        batch.update(prefixed("q_", self.texts.query_inputs(h, r)))
        batch.update(prefixed("c_", self.texts.candidate_inputs(cands)))
        if self.cfg.kepler:
            batch.update(self._mlm_inputs(t, rng))
        return batch

    def _mlm_inputs(self, entities: list[int], rng: BatchRandom | None) -> Batch:
        from kelm.tasks.pretrain import mask_tokens

        if rng is None:
            rng = BatchRandom(torch.default_generator, len(entities), 0, 1)
        inputs = self.texts.candidate_inputs(entities)
        ids = inputs["input_ids"]
        T, L = ids.shape[1], self.cfg.max_length
        u = rng.rand(L, 2)[:, :T]
        random_ids = rng.randint(len(self.tokenizer), L)[:, :T]
        special = self._special[ids] | (inputs["attention_mask"] == 0)
        masked, labels = mask_tokens(
            ids, u, random_ids, special, self.tokenizer.mask_token_id, self.cfg.mlm_probability
        )
        return prefixed("m_", {**inputs, "input_ids": masked}) | {"m_labels": labels}

    def batch_weight(self, batch: Batch) -> int:
        if "eval_triples" in batch:
            return len(batch["eval_triples"]) * len(self.sides)
        return len(batch["triples"])

    def tokens(self, batch: Batch) -> int:
        """Training: (query, positive) pairs; evaluation: triples."""
        return len(batch["eval_triples"] if "eval_triples" in batch else batch["triples"])

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        out = model("train", **{k: v for k, v in batch.items() if k != "triples"})
        loss, logs = self.contrastive(out["query"], out["cands"], batch["triples"], out["temperature"])
        if self.cfg.kepler:
            h, r, t = batch["triples"].unbind(1)
            B = len(h)
            tails, heads = out["cands"][:B], out["cands"][B:]
            ke = transe_loss(heads, out["relations"][r], tails, self.cfg.kepler_margin)
            loss = loss + self.cfg.kepler_weight * (ke + out["mlm_loss"])
            logs |= {"ke_loss": float(ke.detach()), "mlm_loss": float(out["mlm_loss"].detach())}
        return loss, logs

    def contrastive(
        self, query: torch.Tensor, cands: torch.Tensor, triples: torch.Tensor, temperature: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The InfoNCE loss of this rank's queries against the (gathered) batch, pre-batch and self negatives."""
        c, E, R2 = self.cfg, self.num_entities, 2 * self.num_relations
        h, r, t = triples.unbind(1)
        B = len(h)
        tails = cands[:B]
        gather = c.gather_negatives and world_size() > 1
        if gather:
            all_tails, all_ids = gather_with_grad(tails), gather_ids(t)
            positive = dist.get_rank() * B + torch.arange(B, device=h.device)
        else:
            all_tails, all_ids, positive = tails, t, torch.arange(B, device=h.device)
        keys = self.train_keys.to(h.device)
        mask = known_answer_mask(h, r, all_ids, keys, E, R2) | (all_ids[None, :] == t[:, None])
        self_emb = self_mask = None
        if c.self_negatives:
            self_emb = cands[B : 2 * B]
            self_mask = (h == t) | known_answer_mask(h, r, h, keys, E, R2).diagonal()
        pre = self.queue.get()
        pre_emb = pre_mask = None
        if pre is not None:
            pre_emb, pre_ids = pre[0].to(h.device), pre[1].to(h.device)
            pre_mask = known_answer_mask(h, r, pre_ids, keys, E, R2) | (pre_ids[None, :] == t[:, None])
        loss = contrastive_loss(
            query,
            all_tails,
            positive,
            temperature,
            c.margin,
            mask,
            self_emb,
            self_mask,
            pre_emb,
            pre_mask,
            c.pre_batch_weight,
        )
        if torch.is_grad_enabled():
            self.queue.push(all_tails, all_ids)
        return loss, {"temperature": float(temperature.detach())}

    # -- evaluation -----------------------------------------------------------------------------
    def evaluator(self) -> Any:
        return self.ranking.evaluator

    def scoring(self, model: nn.Module) -> Any:
        """Text scoring over all entities (embedded once now), mixed with the structural model if set."""
        text = self._text_scoring(model)
        if self.structural is None:
            return text
        from kelm.kge.mixing import HybridScoring

        return HybridScoring(text, self.structural, 0.5 if self.alpha is None else self.alpha)

    def _text_scoring(self, model: nn.Module) -> TextScoring:
        base = getattr(model, "module", model)  # DDP's wrapped module: no collectives in evaluation
        device = next(base.parameters()).device
        return TextScoring(base.encode, self.texts, self.num_relations, device, self.cfg.encode_batch_size)

    def _alphas(self) -> list[float]:
        """The α values a hybrid evaluation ranks under: the grid (or the given α), plus 0 and 1."""
        grid = self.cfg.alpha_grid if self.cfg.alpha is None else [self.cfg.alpha]
        return sorted({*grid, 0.0, 1.0})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        """Filtered rank metrics over both sides of every triple, all entities scored from text.

        With a structural model: the metrics of every α of `_alphas` as ``alpha=<α>/<metric>``
        (plain means over queries, so ranks combine exactly); `finalize_metrics` picks the α."""
        self._last_split = batches[0].get("eval_split") if batches else None
        alphas = self._alphas() if self.structural is not None else []
        if not batches:
            return {_alpha_key(a, k): 0.0 for a in alphas for k in RANK_METRICS} or {k: 0.0 for k in RANK_METRICS}
        triples = torch.cat([b["eval_triples"] for b in batches])
        was_training = model.training
        model.eval()
        try:
            if self.structural is None:
                result = self.ranking.rank(self._text_scoring(model), triples)
            else:
                from kelm.kge.mixing import rank_alphas

                text = self._text_scoring(model)
                by_alpha = rank_alphas(self.ranking.evaluator, text, self.structural, triples, alphas, self.sides)
        finally:
            model.train(was_training)
        if self.structural is None:
            self._last_ranks = result
            metrics = result.metrics()
            return {k: float(metrics[k]) for k in RANK_METRICS}
        self._last_ranks = by_alpha.get(self.alpha) if self.alpha is not None else None
        out = {}
        for a, res in by_alpha.items():
            m = res.metrics()
            out |= {_alpha_key(a, k): float(m[k]) for k in RANK_METRICS}
        return out

    def finalize_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Hybrid runs: choose α by MRR unless it is given or this is the test split, then report
        that α's metrics, ``alpha``, and the ``structure/*`` (α = 0) and ``text/*`` (α = 1) rows."""
        if self.structural is None:
            return metrics
        from kelm.kge.mixing import best_alpha

        if self.cfg.alpha is None and self._last_split != "test":
            self.alpha = best_alpha({a: metrics[_alpha_key(a, "mrr")] for a in self.cfg.alpha_grid})
        if self.alpha is None:
            raise ConfigError("task.alpha: the test split was ranked before alpha was chosen on the validation split")
        out = {k: metrics[_alpha_key(self.alpha, k)] for k in RANK_METRICS}
        out["alpha"] = self.alpha
        for prefix, a in (("structure", 0.0), ("text", 1.0)):
            out |= {f"{prefix}/{k}": metrics[_alpha_key(a, k)] for k in RANK_METRICS}
        return out

    def eval_details(self) -> Any:
        return self._last_ranks

    def breakdown(self, details: list[Any]) -> dict[str, Any]:
        """``per_relation``: MRR, MR, Hits@k, query count and label per relation id."""
        merged = merge_rankings(details)
        return per_relation_report(merged, list(self.tensors.relation_ids), lambda r: self.kg.relations[r].label)

    # -- artifacts ------------------------------------------------------------------------------
    def save_artifacts(self, folder: Path) -> None:

        write_vocabularies(folder, self.kg, self.tensors.entity_ids, self.tensors.relation_ids)
        self.texts.save(folder)
        enc = folder / ENCODER_DIR
        enc.mkdir(exist_ok=True)
        if self._encoder_config is not None:
            self._encoder_config.save_pretrained(str(enc))
        self.tokenizer.save_pretrained(str(enc))


def evaluate_run(
    run: str | Path,
    hybrid_kge: str | Path | None = None,
    alpha: float | None = None,
    alpha_grid: list[float] | None = None,
) -> dict[str, dict[str, float]]:
    """Rank a finished ``text-kgc`` run's valid and test splits again (one process, no training),
    optionally mixed with a KGE run (``hybrid_kge``, replacing the run's own) with ``alpha`` given
    or chosen on valid from ``alpha_grid``. The data set, split and texts are the run's. With a
    structural model, ``valid_mrr_by_alpha`` holds the validation MRR of every α tried."""
    import tomllib

    from kelm.artifacts import CONFIG
    from kelm.kgc.text_kgc import load_text_kgc

    trained = load_text_kgc(run)
    try:
        with (trained.folder / CONFIG).open("rb") as fh:
            task_table = dict(tomllib.load(fh).get("task", {}))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise DataError(f"cannot read the run's config ({err})", trained.folder / CONFIG) from None
    if hybrid_kge is not None:
        task_table["hybrid_kge"] = str(Path(hybrid_kge).resolve())
    if alpha is not None or hybrid_kge is not None:
        task_table["alpha"] = alpha
    if alpha_grid is not None:
        task_table["alpha_grid"] = alpha_grid
    try:
        cfg = TextKGCConfig(**task_table)
    except ValueError as err:
        raise ConfigError(f"task: {err}".splitlines()[0]) from None
    task = TextKGCTask(cfg)
    out: dict[str, dict[str, float]] = {}
    for split, data in (("valid", task.eval_data()), ("test", task.test_data())):
        if data is not None:
            raw = task.evaluate(trained.model, [task.collate(list(data))])
            if split == "valid" and task.structural is not None:
                out["valid_mrr_by_alpha"] = {f"{a:g}": raw[_alpha_key(a, "mrr")] for a in task._alphas()}
            out[split] = task.finalize_metrics(raw)
    return out


def _alpha_key(alpha: float, metric: str) -> str:
    return f"alpha={alpha:g}/{metric}"


__all__ = ["TextKGCConfig", "TextKGCTask", "evaluate_run"]
