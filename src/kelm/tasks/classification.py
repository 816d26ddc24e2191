"""Sequence classification on a Hugging Face encoder: ``id<TAB>text<TAB>label`` files.

Files are TSV with three columns (poem-sentiment's layout) or two (``text<TAB>label``); a first
line ``id<TAB>text<TAB>label`` / ``text<TAB>label`` is taken as a header. The label set is the
training file's labels (sorted, ``drop_labels`` removed: their training rows are skipped); a dev
or test label outside it is an error naming the file and line. Metrics: accuracy and macro-F1
(over the labels that occur in the gold labels or the predictions), exact across ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kelm.errors import DataError
from kelm.lm import metrics as M
from kelm.lm.batching import encode_inputs, model_inputs
from kelm.lm.encoding import encode_texts
from kelm.lm.speedups import first_token_last_layer
from kelm.tasks.finetune import FinetuneConfig, HFTask, split_files, warn_truncated
from kelm.train.task import Batch


class ClassificationConfig(FinetuneConfig):
    """``[task]`` for ``classification``."""

    name: Literal["classification"] = "classification"
    drop_labels: list[str] = Field(default_factory=list, description="training labels to leave out")
    first_token_last_layer: bool = Field(
        True, description="last encoder layer computed only at the position the head reads (exact; BERT-like)"
    )


def read_tsv(path: Path) -> list[tuple[str, str, int]]:
    """``(text, label, line)`` rows of a classification TSV file."""
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError("invalid UTF-8", path, _line_of(path.read_bytes(), err.start)) from None
    rows: list[tuple[str, str, int]] = []
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        parts = raw.split("\t")
        if len(parts) not in (2, 3):
            raise DataError(f"expected 2 or 3 tab-separated columns (text, label), found {len(parts)}", path, n)
        if n == 1 and parts[-1].strip().lower() == "label":
            continue  # header
        text, label = parts[-2].strip(), parts[-1].strip()
        if not text or not label:
            raise DataError("empty text or label", path, n)
        rows.append((text, label, n))
    if not rows:
        raise DataError("no examples", path)
    return rows


def _line_of(data: bytes, offset: int) -> int:
    return data[:offset].count(b"\n") + 1


class ClassificationTask(HFTask):
    config_class = ClassificationConfig
    name = "classification"
    head = "classification"
    monitor = "macro_f1"
    monitor_mode = "max"

    def __init__(self, cfg: ClassificationConfig):
        super().__init__(cfg)
        files = split_files(cfg, "tsv")
        rows = {split: read_tsv(path) for split, path in files.items() if path is not None}
        dropped = set(cfg.drop_labels)
        rows["train"] = [r for r in rows["train"] if r[1] not in dropped]
        self.labels = sorted({label for _, label, _ in rows["train"]}, key=_label_key)
        if len(self.labels) < 2:
            raise DataError(f"need at least 2 labels in training, found {len(self.labels)}", files["train"])
        index = {label: i for i, label in enumerate(self.labels)}
        for split in ("dev", "test"):
            for _, label, line in rows.get(split, []):
                if label not in index:
                    known = ", ".join(self.labels)
                    raise DataError(f"label '{label}' does not occur in training (labels: {known})", files[split], line)
        truncated: dict[str, tuple[int, int]] = {}
        self.splits: dict[str, list[dict[str, Any]]] = {}
        for split, items in rows.items():
            samples, n_cut = self.encode([t for t, _, _ in items])
            for s, (_, label, _) in zip(samples, items, strict=True):
                s["label"] = index[label]
            self.splits[split] = samples
            truncated[split] = (n_cut, len(samples))
        warn_truncated(truncated, self.max_length)

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if self.cfg.first_token_last_layer:
            first_token_last_layer(model)
        return model

    def encode(self, texts: list[str]) -> tuple[list[dict[str, Any]], int]:
        """Token ids per text, cut to the maximum length; also how many were cut."""
        return encode_texts(self.tokenizer, texts, self.max_length)

    # -- data ---------------------------------------------------------------------------------
    def collate(self, samples: list[Any]) -> Batch:
        batch = encode_inputs(samples, self.tokenizer.pad_token_id)
        batch["labels"] = torch.tensor([s["label"] for s in samples], dtype=torch.int64)
        return batch

    def batch_weight(self, batch: Batch) -> int:
        return len(batch["labels"])

    # -- loss and metrics ---------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.gold_loss(model(**model_inputs(batch)).logits, batch), {}

    def gold_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Cross-entropy of the logits against the batch's labels."""
        return F.cross_entropy(logits.float(), batch["labels"])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        assert self.labels is not None
        n = sum(self.batch_weight(b) for b in batches)
        loss_sum, gold, pred = 0.0, [], []
        for b in batches:
            logits = model(**model_inputs(b)).logits.float()
            loss_sum += float(F.cross_entropy(logits, b["labels"], reduction="sum"))
            gold += b["labels"].tolist()
            pred += logits.argmax(-1).tolist()
        names = self.labels
        tp, n_pred, n_gold = M.label_counts([names[i] for i in gold], [names[i] for i in pred])
        scale = 1.0 / n if n else 0.0
        out = {"loss": loss_sum * scale, "accuracy": sum(tp.values()) * scale}
        return out | M.count_stats(tp, n_pred, n_gold, names, n)

    def finalize_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        plain, per = M.split_stats(metrics)
        if not per:
            return metrics
        self.keep_for_report(per)
        split = "test" if "test" in self.splits else "dev"
        self._report_total = float(len(self.splits[split]))
        return plain | {"macro_f1": M.macro_f1(per)}

    def report_title(self) -> str:
        split = "test" if "test" in self.splits else "dev"
        return f"classification report ({split} set, {self.cfg.model})"


def _label_key(label: str) -> tuple[int, float | str]:
    """Numeric labels in numeric order (-1 < 0 < 1 < 2), then the others alphabetically."""
    try:
        return (0, float(label))
    except ValueError:
        return (1, label)


@torch.no_grad()
def classify(model: nn.Module, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 32):
    """``(label, probability)`` per text with a fine-tuned classifier."""
    labels = model.config.id2label
    samples, _ = encode_texts(tokenizer, texts, max_length)
    out: list[tuple[str, float]] = []
    for lo in range(0, len(samples), batch_size):
        batch = encode_inputs(samples[lo : lo + batch_size], tokenizer.pad_token_id)
        probs = model(**batch).logits.float().softmax(-1)
        p, idx = probs.max(-1)
        out += [(labels[int(i)], float(q)) for q, i in zip(p, idx, strict=True)]
    return out


__all__ = ["ClassificationConfig", "ClassificationTask", "classify", "read_tsv"]
