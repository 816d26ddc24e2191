"""Joint entity and relation extraction: a span-based extractor (`kelm.extract`) on an HF encoder.

Data are JSON lists of sentences in the SpERT layout (CoNLL04, ADE, SciERC): ``tokens`` (words),
``entities`` (``{"type", "start", "end"}``, word offsets, end exclusive) and ``relations``
(``{"type", "head", "tail"}``, indices into ``entities``). Training classifies every span of up to
``max_width`` words (gold type or none) and every ordered pair of gold entities (a sigmoid per
relation type); evaluation decodes mentions first, then relations between them, and reports
strict micro precision, recall and F1 for entities and relations (a relation counts when both
spans, both entity types and its type are right), exact across ranks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kelm.errors import ConfigError, DataError
from kelm.extract.decoding import decode_batch, ordered_pairs, strict_counts
from kelm.extract.extractor import write_settings
from kelm.extract.inputs import collate_inputs, encode_sentence
from kelm.extract.model import ExtractorSettings, SpanRelationExtractor
from kelm.extract.spans import span_bounds, span_index
from kelm.lm import metrics as M
from kelm.tasks.finetune import FinetuneConfig, HFTask, split_files, warn_truncated
from kelm.train.data import BatchRandom
from kelm.train.task import Batch

IGNORE = -100


class ExtractionConfig(FinetuneConfig):
    """``[task]`` for ``extraction``."""

    name: Literal["extraction"] = "extraction"
    dataset: str | None = Field(
        None, description="a folder with train/dev/test.json, absolute or under data_dir / $KELM_DATA_DIR (re/conll04)"
    )
    max_width: int = Field(10, ge=1, le=32, description="longest candidate entity, in words")
    width_dim: int = Field(25, ge=1)
    span_ends: bool = Field(False, description="entity head also reads each span's first and last word")
    shape_dim: int = Field(0, ge=0, description="size of the word-shape (capitalisation) embedding; 0: none")
    dropout: float = Field(0.1, ge=0, lt=1)
    relation_threshold: float = Field(0.4, gt=0, lt=1)
    head_lr_scale: float = Field(
        10.0, gt=0, description="learning rate of the fresh span and relation heads, as a multiple of train.lr"
    )
    negative_spans: int = Field(
        100, ge=0, description="non-entity spans per training sentence the loss sees, drawn at random (0: all)"
    )
    compact_vocab: bool = False


def dataset_folder(cfg: ExtractionConfig) -> Path | None:
    """The folder ``task.dataset`` names: as given, or under ``data_dir`` / ``$KELM_DATA_DIR``."""
    if not cfg.dataset:
        return None
    root = Path(cfg.data_dir or os.environ.get("KELM_DATA_DIR", "."))
    folder = next((p for p in (Path(cfg.dataset), root / cfg.dataset) if p.is_dir()), None)
    if folder is None:
        raise ConfigError(f"task.dataset: no folder '{cfg.dataset}' (looked in . and {root})")
    return folder


def read_sentences(path: Path) -> list[dict[str, Any]]:
    """The sentences of a SpERT-layout JSON file, checked; errors name the file and item."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"invalid UTF-8 at byte {err.start}", path) from None
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON ({err.msg})", path, err.lineno) from None
    if not isinstance(data, list) or not data:
        raise DataError("expected a non-empty JSON list of sentences", path)
    for n, item in enumerate(data):
        where = f"item {n}"
        if not isinstance(item, dict) or not isinstance(item.get("tokens"), list) or not item["tokens"]:
            raise DataError(f"{where}: needs a non-empty 'tokens' list", path)
        words = len(item["tokens"])
        ents = item.get("entities", [])
        for e in ents:
            if not (isinstance(e, dict) and {"type", "start", "end"} <= set(e)):
                raise DataError(f"{where}: an entity needs type, start and end", path)
            if not (0 <= e["start"] < e["end"] <= words):
                raise DataError(f"{where}: entity span [{e['start']}, {e['end']}) outside {words} words", path)
        for r in item.get("relations", []):
            if not (isinstance(r, dict) and {"type", "head", "tail"} <= set(r)):
                raise DataError(f"{where}: a relation needs type, head and tail", path)
            if not (0 <= r["head"] < len(ents) and 0 <= r["tail"] < len(ents)):
                raise DataError(f"{where}: relation names entity {r['head']} or {r['tail']} of {len(ents)}", path)
    return data


def gold_keys(item: dict[str, Any]) -> tuple[list[tuple], list[tuple]]:
    """Strict keys of a sentence's gold mentions and relations."""
    ents = [(e["start"], e["end"], e["type"]) for e in item.get("entities", [])]
    rels = [(ents[r["head"]], ents[r["tail"]], r["type"]) for r in item.get("relations", [])]
    return ents, rels


class ExtractionTask(HFTask):
    config_class = ExtractionConfig
    name = "extraction"
    monitor = "relation_f1"
    monitor_mode = "max"
    uses_batch_random = True

    def __init__(self, cfg: ExtractionConfig):
        super().__init__(cfg)
        self.cfg: ExtractionConfig = cfg
        files = split_files(cfg, "json", folder=dataset_folder(cfg))
        raw = {split: read_sentences(path) for split, path in files.items() if path is not None}
        train = raw["train"]
        self.entity_types = sorted({e["type"] for s in train for e in s.get("entities", [])})
        self.relation_types = sorted({r["type"] for s in train for r in s.get("relations", [])})
        for split, items in raw.items():
            for n, s in enumerate(items):
                for e in s.get("entities", []):
                    if e["type"] not in self.entity_types:
                        raise DataError(f"item {n}: entity type '{e['type']}' does not occur in training", files[split])
                for r in s.get("relations", []):
                    if r["type"] not in self.relation_types:
                        raise DataError(
                            f"item {n}: relation type '{r['type']}' does not occur in training", files[split]
                        )
        self.settings = ExtractorSettings(
            tuple(self.entity_types),
            tuple(self.relation_types),
            cfg.max_width,
            cfg.width_dim,
            cfg.dropout,
            cfg.span_ends,
            cfg.shape_dim,
        )
        truncated = {}
        for split, items in raw.items():
            samples, cut = [], 0
            for item in items:
                sample, was_cut = encode_sentence(self.tokenizer, list(map(str, item["tokens"])), self.max_length)
                sample["entities"], sample["relations"] = gold_keys(item)
                samples.append(sample)
                cut += was_cut
            self.splits[split] = samples
            truncated[split] = (cut, len(samples))
        warn_truncated(truncated, self.max_length)

    # -- model ----------------------------------------------------------------------------------
    def lr_scale(self, name: str) -> float:
        """The heads (everything outside the encoder) learn ``head_lr_scale`` times faster."""
        return 1.0 if "encoder." in name else self.cfg.head_lr_scale

    def build_model(self) -> nn.Module:
        from kelm.lm.encoding import load_encoder
        from kelm.train.sparse_grads import row_sparse_embedding_grads

        c = self.cfg
        sizes = {"hidden_size": c.hidden_size, "num_layers": c.num_layers, "num_heads": c.num_heads}
        encoder = load_encoder(c.model, self.tokenizer, sizes, max(self.max_length, 512))
        self._hf_config = encoder.config
        model = SpanRelationExtractor(encoder, self.settings)
        if c.sparse_embedding_grads:
            row_sparse_embedding_grads(model)
        return model

    def model_config(self) -> dict[str, Any]:
        spec = {"kind": "extractor", "base": self.cfg.model, "max_length": self.max_length}
        return {"task": self.name, "model": spec}

    def save_artifacts(self, folder: Path) -> None:
        """Tokenizer and encoder config, and the head's settings (types, widths) for `Extractor`."""
        super().save_artifacts(folder)
        write_settings(folder, self.settings, self.cfg.relation_threshold, self.max_length)

    # -- data -----------------------------------------------------------------------------------
    def collate(self, samples: list[Any], rng: BatchRandom | None = None) -> Batch:
        """Padded inputs, span labels (with ``rng``, training: only ``negative_spans`` random
        non-entity spans per sentence keep a label) and gold pairs with their relation targets."""
        batch = collate_inputs(samples, self.tokenizer.pad_token_id)
        N, W = int(batch["n_words"].max()), self.cfg.max_width
        starts, ends = span_bounds(N, W)
        labels = torch.zeros(len(samples), len(starts), dtype=torch.long)
        labels[ends[None] > batch["n_words"][:, None]] = IGNORE  # spans past a sentence's end
        pairs, pair_labels = [], []
        type_id = {t: k + 1 for k, t in enumerate(self.entity_types)}
        rel_id = {t: k for k, t in enumerate(self.relation_types)}
        for b, s in enumerate(samples):
            flat = [span_index(st, en, N, W) for st, en, _ in s["entities"]]
            for k, (_, _, t) in zip(flat, s["entities"], strict=True):
                if k is not None:
                    labels[b, k] = type_id[t]
            targets: dict[tuple[int, int], list[int]] = {}
            for head, tail, t in s["relations"]:
                targets.setdefault((s["entities"].index(head), s["entities"].index(tail)), []).append(rel_id[t])
            for i, j in ordered_pairs(len(flat)):
                if flat[i] is None or flat[j] is None:
                    continue
                pairs.append((b, flat[i], flat[j]))
                row = [0.0] * len(self.relation_types)
                for r in targets.get((i, j), []):
                    row[r] = 1.0
                pair_labels.append(row)
        if rng is not None and self.cfg.negative_spans:
            self._sample_negatives(labels, starts, ends, rng)
        batch["span_labels"] = labels
        batch["pairs"] = torch.tensor(pairs, dtype=torch.long).view(-1, 3)
        batch["pair_labels"] = torch.tensor(pair_labels, dtype=torch.float32).view(-1, len(self.relation_types))
        batch["gold_entities"] = [s["entities"] for s in samples]
        batch["gold_relations"] = [s["relations"] for s in samples]
        return batch

    def _sample_negatives(
        self, labels: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, rng: BatchRandom
    ) -> None:
        """Keep ``negative_spans`` non-entity labels per sentence, chosen by per-sentence random keys
        laid out by (start, width), so a sentence draws the same spans at every world size."""
        W = self.cfg.max_width
        keys = rng.rand(max(self.max_length, int(ends.max())) * W)[:, starts * W + (ends - starts - 1)]  # (B, S)
        negative = labels == 0
        keys = keys.masked_fill(~negative, 2.0)
        k = min(self.cfg.negative_spans, keys.shape[1])
        chosen = torch.zeros_like(negative)
        chosen.scatter_(1, keys.topk(k, dim=1, largest=False).indices, True)
        labels[negative & ~chosen] = IGNORE

    def batch_weight(self, batch: Batch) -> int:
        return len(batch["n_words"])

    # -- loss and metrics -----------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        ent_logits, rel_logits = model("train", **batch)
        ent, rel = self._losses(ent_logits, rel_logits, batch)
        return ent + rel, {"entity_loss": float(ent.detach()), "relation_loss": float(rel.detach())}

    @staticmethod
    def _losses(ent_logits: torch.Tensor, rel_logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy over the labelled spans, and binary cross-entropy over the gold pairs."""
        ent = F.cross_entropy(ent_logits.flatten(0, 1).float(), batch["span_labels"].flatten(), ignore_index=IGNORE)
        if len(rel_logits):
            return ent, F.binary_cross_entropy_with_logits(rel_logits.float(), batch["pair_labels"])
        return ent, rel_logits.sum()

    @torch.no_grad()
    def predict_batch(self, model: nn.Module, batch: Batch) -> list[tuple[list, list]]:
        """Mentions and relations (`kelm.extract.decoding`) of each sentence of the batch."""
        return self._predict(model, batch)[1]

    def _predict(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, list[tuple[list, list]]]:
        """One encoder pass: the batch's loss and its decoded mentions and relations."""
        enc, ent_logits = model("spans", **batch)
        ent, rel = self._losses(ent_logits, model("relations", encoded=enc, pairs=batch["pairs"]), batch)
        types = (self.entity_types, self.relation_types)
        found = decode_batch(model, enc, ent_logits, batch["n_words"].tolist(), types, self.cfg.relation_threshold)
        return ent + rel, found

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        n = sum(self.batch_weight(b) for b in batches)
        gold_e, gold_r, pred_e, pred_r = [], [], [], []
        loss_sum = 0.0
        for b in batches:
            loss, found = self._predict(model, b)
            loss_sum += float(loss) * self.batch_weight(b)
            for (mentions, rels), ge, gr in zip(found, b["gold_entities"], b["gold_relations"], strict=True):
                gold_e.append(ge)
                gold_r.append(gr)
                pred_e.append([m.key() for m in mentions])
                pred_r.append([r.key() for r in rels])
        ent = strict_counts(gold_e, pred_e)
        rel = strict_counts(gold_r, pred_r)
        out = {"loss": loss_sum / n if n else 0.0}
        out |= _prefixed(M.count_stats(*ent, self.entity_types, n), "entity:")
        out |= _prefixed(M.count_stats(*rel, self.relation_types, n), "relation:")
        return out

    def finalize_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        plain, per = M.split_stats(metrics)
        if not per:
            return metrics
        out = dict(plain)
        for kind in ("entity", "relation"):
            mine = {name.split(":", 1)[1]: s for name, s in per.items() if name.startswith(kind + ":")}
            p, r, f = M.micro_prf(mine)
            out |= {f"{kind}_precision": p, f"{kind}_recall": r, f"{kind}_f1": f, f"{kind}_macro_f1": M.macro_f1(mine)}
        self.keep_for_report(per)
        split = "test" if "test" in self.splits else "dev"
        self._report_total = float(len(self.splits[split]))
        return out

    def report_title(self) -> str:
        split = "test" if "test" in self.splits else "dev"
        return f"strict extraction report ({split} set, {self.cfg.model}; support = gold items)"


def _prefixed(stats: dict[str, float], prefix: str) -> dict[str, float]:
    """``_tp/name`` keys of `count_stats` as ``_tp/prefix name``."""
    out = {}
    for key, value in stats.items():
        head, name = key.rsplit("/", 1)
        out[f"{head}/{prefix}{name}"] = value
    return out


__all__ = ["ExtractionConfig", "ExtractionTask", "read_sentences"]
