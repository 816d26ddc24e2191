"""Knowledge-graph question answering over 1–3 hops (``kgqa``): an LM-only or a KG-enhanced model.

Data: a folder of ``{split}_{k}hop.txt`` question files (`kelm.kgqa.questions`, written by
`kelm kgqa generate`) and the graph store they were generated from. ``model = "lm"`` trains the
bi-encoder baseline over all entities, ``model = "kg"`` the relational GNN over each topic
entity's k-hop subgraph (`kelm.kgqa.models`). Both fit the answer set with cross-entropy, the
target probability spread evenly over the answers (for ``kg``, those inside the subgraph).

Metrics (per hop count and overall): Hits@1 and set F1, where the predicted set is the top entity
plus those scoring at least ``threshold`` × the top probability; the threshold is chosen on dev
(best F1) and then used for test and for `kelm kgqa ask`. ``answer_recall`` is the share of
questions with an answer inside the retrieved subgraph (``kg``). All metrics travel between
ranks as count shares and are divided out in `finalize_metrics`, so they are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from kelm.atomic import write_text_atomic
from kelm.config import Section
from kelm.errors import DataError
from kelm.kgqa.batching import QA_FILE, SubgraphTensors, build_qa_model, collate_subgraphs
from kelm.kgqa.graph import QAGraph, names_to_indices
from kelm.kgqa.metrics import THRESHOLDS, answer_set, hits_at_1, set_f1
from kelm.kgqa.models import pad_states, segment_log_softmax, token_states
from kelm.kgqa.questions import SPLITS, Question, read_split
from kelm.lm.batching import Samples, encode_inputs
from kelm.lm.encoding import embed_texts, encode_texts, reference_encoder
from kelm.train.task import Batch, Task

PLACEHOLDER = "the entity"


class KGQAConfig(Section):
    """``[task]`` for ``kgqa``."""

    name: Literal["kgqa"] = "kgqa"
    data: str = Field(..., min_length=1, description="folder of {split}_{k}hop.txt question files")
    store: str = Field(..., min_length=1, description="the graph store the questions come from")
    backend: str = "ladybug"
    uri: str | None = None
    model: Literal["lm", "kg"] = "kg"
    hops: list[int] = Field(default_factory=lambda: [1, 2, 3])
    max_train_per_hop: int | None = Field(None, ge=1, description="keep the first N training questions per hop")
    max_eval_per_hop: int | None = Field(None, ge=1, description="keep the first N dev/test questions per hop")
    # question encoder
    encoder: str = Field("minilm", description="minilm, tiny-bert or a checkpoint folder")
    finetune_encoder: bool = Field(True, description="train the encoder; false: fixed token states, computed once")
    max_length: int = Field(64, ge=8)
    mask_topic: bool | None = Field(None, description="hide the topic's name from the encoder (default: kg only)")
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    # scorer
    dim: int = Field(128, ge=4)
    reasoning_hops: int = Field(3, ge=1, le=4, description="message-passing layers of the kg model")
    subgraph_hops: int = Field(3, ge=1)
    fanout: int | None = Field(32, ge=1)
    max_nodes: int | None = Field(1000, ge=2)


class KGQATask(Task):
    config_class = KGQAConfig
    name = "kgqa"
    monitor = "hits@1"
    monitor_mode = "max"

    def __init__(self, cfg: KGQAConfig, graph: QAGraph | None = None):
        from kelm.lm.hf import load_tokenizer

        self.cfg = cfg
        self.graph = graph if graph is not None else QAGraph.from_store(cfg.store, cfg.backend, cfg.uri)
        self.tokenizer = load_tokenizer(cfg.encoder)
        self.threshold = 1.0
        self._split = "dev"
        self._subgraphs: dict[int, SubgraphTensors] = {}
        self.splits: dict[str, list[dict[str, Any]]] = {}
        for split in SPLITS:
            qs = self._read(split)
            if qs:
                self.splits[split] = self._samples(qs, split)
        if not self.splits.get("train"):
            raise DataError(f"no training questions for hops {cfg.hops} (train_{{k}}hop.txt)", cfg.data)
        self.q_dim = self._q_dim()
        self.qtoks: list[torch.Tensor] = []
        if not cfg.finetune_encoder:
            texts = [s["text"] for split in self.splits.values() for s in split]
            enc = reference_encoder(cfg.encoder, self.tokenizer, self._sizes())
            self.qtoks = token_states(enc, self.tokenizer, texts, cfg.max_length)
            row = 0
            for split in self.splits.values():
                for s in split:
                    s["qrow"], row = row, row + 1
        self.entity_text = self.embed(self.graph.names) if cfg.model == "lm" else None
        steps = range(2 * self.graph.num_relations)
        self.relation_text = self.embed([self.graph.step_name(s) for s in steps]) if cfg.model == "kg" else None

    # -- data -----------------------------------------------------------------------------------
    @property
    def masks_topic(self) -> bool:
        return self.cfg.mask_topic if self.cfg.mask_topic is not None else self.cfg.model == "kg"

    def _read(self, split: str) -> list[Question]:
        cap = self.cfg.max_train_per_hop if split == "train" else self.cfg.max_eval_per_hop
        out: list[Question] = []
        for k in self.cfg.hops:
            qs = read_split(self.cfg.data, split, [k])
            out += qs[:cap] if cap is not None else qs
        return out

    def _samples(self, questions: list[Question], split: str) -> list[dict[str, Any]]:
        path_of = {k: Path(self.cfg.data) / f"{split}_{k}hop.txt" for k in self.cfg.hops}
        texts = [self.question_text(q) for q in questions]
        encoded, _ = encode_texts(self.tokenizer, texts, self.cfg.max_length)
        samples = []
        for q, text, enc in zip(questions, texts, encoded, strict=True):
            topic = names_to_indices(self.graph, [q.topic], path_of[q.hops], q.line)[0]
            answers = names_to_indices(self.graph, q.answers, path_of[q.hops], q.line)
            samples.append({**enc, "text": text, "topic": topic, "answers": answers, "hops": q.hops, "split": split})
        return samples

    def question_text(self, q: Question) -> str:
        return q.masked(PLACEHOLDER) if self.masks_topic else q.text.replace("[", "").replace("]", "")

    def _sizes(self) -> dict[str, int]:
        c = self.cfg
        return {"hidden_size": c.hidden_size, "num_layers": c.num_layers, "num_heads": c.num_heads}

    def _q_dim(self) -> int:
        if self.cfg.encoder == "tiny-bert":
            return self.cfg.hidden_size
        from transformers import AutoConfig

        from kelm.lm.hf import quiet, resolve_model

        with quiet():
            return int(AutoConfig.from_pretrained(resolve_model(self.cfg.encoder)).hidden_size)

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Fixed text vectors from the reference (frozen) encoder."""
        enc = reference_encoder(self.cfg.encoder, self.tokenizer, self._sizes())
        return embed_texts(enc, self.tokenizer, texts, self.cfg.max_length)

    def subgraph(self, topic: int) -> SubgraphTensors:
        sub = self._subgraphs.get(topic)
        if sub is None:
            c = self.cfg
            local = self.graph.subgraph(topic, c.subgraph_hops, c.fanout, c.max_nodes)
            sub = self._subgraphs[topic] = SubgraphTensors.of(local, self.graph.num_relations)
        return sub

    def train_data(self) -> Sequence[Any]:
        return Samples(self.splits["train"])

    def eval_data(self) -> Sequence[Any] | None:
        return Samples(self.splits["dev"]) if "dev" in self.splits else None

    def test_data(self) -> Sequence[Any] | None:
        return Samples(self.splits["test"]) if "test" in self.splits else None

    def collate(self, samples: list[Any]) -> Batch:
        if self.cfg.finetune_encoder:
            batch = encode_inputs(samples, self.tokenizer.pad_token_id)
        else:
            batch = pad_states([self.qtoks[s["qrow"]] for s in samples])
        batch["topic"] = torch.tensor([s["topic"] for s in samples], dtype=torch.int64)
        batch["answers"] = [s["answers"] for s in samples]
        batch["hops"] = [s["hops"] for s in samples]
        batch["split"] = samples[0]["split"] if samples else "train"
        if self.cfg.model == "kg":
            batch.update(collate_subgraphs([self.subgraph(s["topic"]) for s in samples]))
        targets = [self._targets(batch, i, s["answers"]) for i, s in enumerate(samples)]
        rows = [i for i, cols in enumerate(targets) for _ in cols]
        batch["target_rows"] = torch.tensor(rows, dtype=torch.int64)
        batch["target_cols"] = torch.tensor([c for cols in targets for c in cols], dtype=torch.int64)
        batch["target_weight"] = torch.tensor([1.0 / len(cols) for cols in targets for _ in cols])
        return batch

    def _targets(self, batch: Batch, i: int, answers: list[int]) -> list[int]:
        """Columns of the answers in the score vector: entity ids (lm) or positions in the subgraphs (kg)."""
        if self.cfg.model == "lm":
            return list(answers)
        pos = batch["_positions"][i]
        return [pos[a] for a in answers if a in pos]

    def batch_weight(self, batch: Batch) -> int:
        return len(batch["topic"])

    # -- model and loss -------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return build_qa_model(self.model_spec(), self.entity_text, self.relation_text)

    def model_spec(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "kind": "kgqa",
            "model": c.model,
            "encoder": c.encoder,
            "finetune_encoder": c.finetune_encoder,
            "q_dim": self.q_dim,
            "dim": c.dim,
            "reasoning_hops": c.reasoning_hops,
            "num_entities": self.graph.num_entities,
            "num_relations": self.graph.num_relations,
            "mask_topic": self.masks_topic,
            "max_length": c.max_length,
            "subgraph_hops": c.subgraph_hops,
            "fanout": c.fanout,
            "max_nodes": c.max_nodes,
            **self._sizes(),
        }

    def model_config(self) -> dict[str, Any]:
        return {"task": self.name, "model": {**self.model_spec(), "threshold": self.threshold}}

    def save_artifacts(self, folder: Path) -> None:
        import json

        self.graph.save(folder)
        write_text_atomic(folder / QA_FILE, json.dumps({"threshold": self.threshold}) + "\n")

    def logits(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and their log-probabilities (over all entities for lm, within each subgraph for kg)."""
        logits = model(**{k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}).float()
        if self.cfg.model == "lm":
            return logits, logits.log_softmax(-1)
        return logits, segment_log_softmax(logits, batch["node_batch"], len(batch["topic"]))

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self._loss(batch, self.logits(model, batch)[1]), {}

    def _loss(self, batch: Batch, logp: torch.Tensor) -> torch.Tensor:
        rows, cols = batch["target_rows"], batch["target_cols"]
        picked = logp[rows, cols] if logp.dim() == 2 else logp[cols]
        return -(picked * batch["target_weight"]).sum() / len(batch["topic"]) + 0.0 * logp.sum()

    # -- evaluation -----------------------------------------------------------------------------
    def ranked(self, batch: Batch, logits: torch.Tensor) -> list[tuple[list[int], list[float]]]:
        """Per question: candidate entity ids and their probabilities (the topic left out)."""
        out = []
        for i, topic in enumerate(batch["topic"].tolist()):
            if self.cfg.model == "lm":
                cand, scores = list(range(logits.shape[1])), logits[i]
            else:
                sel = batch["node_batch"] == i
                cand, scores = batch["nodes"][sel].tolist(), logits[sel]
            probs = scores.softmax(-1).tolist()
            keep = [j for j, c in enumerate(cand) if c != topic]
            out.append(([cand[j] for j in keep], [probs[j] for j in keep]))
        return out

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        n = sum(self.batch_weight(b) for b in batches)
        sums: dict[str, float] = {}

        def add(key: str, value: float) -> None:
            sums[key] = sums.get(key, 0.0) + value

        for b in batches:
            self._split = b["split"]
            logits, logp = self.logits(model, b)
            add("loss", float(self._loss(b, logp)) * len(b["topic"]))
            for (cand, probs), gold, k in zip(self.ranked(b, logits), b["answers"], b["hops"], strict=True):
                add(f"_n/{k}", 1.0)
                add(f"_hits/{k}", hits_at_1(cand[probs.index(max(probs))] if cand else None, gold))
                add(f"_recall/{k}", float(bool(set(cand) & set(gold))))
                for t in THRESHOLDS:
                    add(f"_f1/{k}/{t}", set_f1(answer_set(cand, probs, t), gold))
        keys = [f"_{kind}/{k}" for k in self.cfg.hops for kind in ("n", "hits", "recall")]
        keys += [f"_f1/{k}/{t}" for k in self.cfg.hops for t in THRESHOLDS]
        scale = 1.0 / n if n else 0.0
        return {key: sums.get(key, 0.0) * scale for key in ["loss", *keys]}  # same keys on every rank

    def finalize_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        if "_n/" + str(self.cfg.hops[0]) not in metrics:
            return metrics
        hops = self.cfg.hops
        if self._split == "dev":
            totals = {t: sum(metrics[f"_f1/{k}/{t}"] for k in hops) for t in THRESHOLDS}
            self.threshold = max(THRESHOLDS, key=lambda t: (totals[t], -t))
        t = self.threshold
        out = {
            "loss": metrics["loss"],
            "hits@1": sum(metrics[f"_hits/{k}"] for k in hops),
            "f1": sum(metrics[f"_f1/{k}/{t}"] for k in hops),
            "threshold": t,
        }
        if self.cfg.model == "kg":
            out["answer_recall"] = sum(metrics[f"_recall/{k}"] for k in hops)
        for k in hops:
            share = metrics[f"_n/{k}"]
            if share > 0:
                out[f"hits@1_{k}hop"] = metrics[f"_hits/{k}"] / share
                out[f"f1_{k}hop"] = metrics[f"_f1/{k}/{t}"] / share
        return out


__all__ = ["KGQAConfig", "KGQATask"]
