"""What the fine-tuning tasks share: config fields, data files, padding, length grouping, model files.

Batches are padded to their own longest sequence (dynamic padding). Training samples carry
``group_lengths``, which `kelm.train.data.ShardedBatches` uses to sort each window of 50 global
batches by length before cutting batches (and then shuffles the batches), so a batch holds
sequences of similar length and little compute goes to padding; the order still comes from
``(seed, epoch)`` alone, so resume and sharding stay exact. Held-out samples are sorted by length
once (metrics do not depend on order).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field
from torch import nn

from kelm.atomic import write_text_atomic
from kelm.config import Section
from kelm.errors import ConfigError, DataError
from kelm.lm import metrics as M
from kelm.lm.batching import Samples, by_length, encode_inputs, model_inputs, pad
from kelm.lm.compact_vocab import compact_vocabulary
from kelm.lm.speedups import row_sparse_embedding_grads, short_row_attention
from kelm.moe.plan import ExpertParallelPlan
from kelm.train.config import FINETUNE_DEFAULTS, TrainConfig
from kelm.train.parallel import ParallelPlan
from kelm.train.task import Batch, Task

REPORT_FILE = "classification_report.txt"
SPLITS = ("train", "dev", "test")


class TruncationWarning(UserWarning):
    """Some inputs were longer than the model's maximum length and were cut."""


class FinetuneConfig(Section):
    """Fields every fine-tuning ``[task]`` table has."""

    dataset: str | None = Field(None, description="registered data-set name (see `kelm data list`)")
    data_dir: str | None = None
    train: str | None = Field(None, description="training file (instead of, or overriding, the data set's)")
    dev: str | None = None
    test: str | None = None
    model: str = Field("minilm", description="minilm, tiny-bert, tiny-gpt2, a checkpoint folder or a hub id")
    max_length: int | None = Field(None, ge=8, description="longest input in tokens (default: the model's)")
    group_by_length: bool = True
    sparse_embedding_grads: bool = Field(
        True, description="embedding backward writes only the rows a batch uses (same gradients, less time)"
    )
    short_row_attention: bool = Field(
        True, description="on the CPU, the attention softmax of batches under 16 tokens takes the fast kernel"
    )
    keep_zero_weights: bool = Field(
        False,
        description="encoder weights that are exactly zero stay zero (recovery fine-tune after unstructured pruning)",
    )
    compact_vocab: bool = Field(
        True,
        description="train only the vocabulary rows the data uses (exact with weight_decay 0; the saved "
        "model has the full vocabulary)",
    )
    # sizes of from-scratch models (tiny-bert, tiny-gpt2)
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)


def split_files(cfg: FinetuneConfig, suffix: str, folder: Path | None = None) -> dict[str, Path | None]:
    """The train/dev/test files: explicit files win over ``SPLIT.suffix`` in ``folder`` (default:
    the named data set's folder)."""
    files: dict[str, Path | None] = dict.fromkeys(SPLITS)
    if folder is None and cfg.dataset:
        from kelm.data import resolve

        folder = resolve(cfg.dataset, data_dir=cfg.data_dir)
    if folder is not None:
        for split in SPLITS:
            path = folder / f"{split}.{suffix}"
            files[split] = path if path.is_file() else None
    for split in SPLITS:
        given = getattr(cfg, split)
        if given is not None:
            path = Path(given)
            if not path.is_file():
                raise DataError("file not found", path)
            files[split] = path
    if files["train"] is None:
        raise ConfigError("task: no training data (set task.dataset or task.train, or pass --dataset / --train)")
    return files


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def warn_truncated(counts: dict[str, tuple[int, int]], max_length: int) -> None:
    """One warning for all splits: how many sequences were cut to ``max_length`` tokens."""
    cut = {split: c for split, c in counts.items() if c[0]}
    if not cut or not is_main_process():
        return
    parts = ", ".join(f"{n} of {total} in {split}" for split, (n, total) in cut.items())
    warnings.warn(f"{parts} longer than {max_length} tokens: truncated", TruncationWarning, stacklevel=3)


class HFTask(Task):
    """A task on a Hugging Face model with one head; subclasses read data and define metrics."""

    head = "classification"
    monitor_mode = "max"
    train_defaults = FINETUNE_DEFAULTS

    def parallel_plan(self) -> ParallelPlan:
        """An upcycled (MoE) model may shard its experts; a dense one leaves everything to the strategy."""
        return ExpertParallelPlan()

    def __init__(self, cfg: FinetuneConfig):
        from kelm.lm.hf import load_tokenizer, model_max_length

        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.model)
        self.max_length = model_max_length(self.tokenizer, cfg.max_length)
        self.labels: list[str] | None = None
        self._hf_config: Any = None
        self._last: dict[str, dict[str, float]] | None = None
        self._report_total = 0.0
        self.splits: dict[str, list[dict[str, Any]]] = {}
        self._compact = False
        #: Turns the loaded model into the one trained (a distillation student), before the speed-ups.
        self.student_transform: Callable[[nn.Module], nn.Module] | None = None

    # -- model ----------------------------------------------------------------------------------
    def configure(self, train: TrainConfig) -> None:
        """Compact the vocabulary only where it is exact: no weight decay (rows without gradient
        then never move) and parameters that are not sharded (FSDP2 shards the full table)."""
        self._compact = self.cfg.compact_vocab and train.weight_decay == 0 and train.strategy != "fsdp2"
        if self.cfg.keep_zero_weights and train.strategy == "fsdp2":
            raise ConfigError("task.keep_zero_weights masks gradients of whole tensors; use strategy ddp, not fsdp2")

    def build_model(self) -> nn.Module:
        from kelm.lm.hf import build_hf_model

        c = self.cfg
        sizes = {"hidden_size": c.hidden_size, "num_layers": c.num_layers, "num_heads": c.num_heads}
        model = build_hf_model(c.model, self.head, self.tokenizer, self.labels, sizes, max(self.max_length, 512))
        if self.student_transform is not None:
            model = self.student_transform(model)
        self._hf_config = model.config
        if c.keep_zero_weights:
            from kelm.compress.prune import keep_zeros

            keep_zeros(model)
        if self._compact:
            compact_vocabulary(model, self.token_ids(), sparse_grads=c.sparse_embedding_grads)
        if c.sparse_embedding_grads:
            row_sparse_embedding_grads(model)
        if c.short_row_attention:
            short_row_attention(model)
        return model

    def token_ids(self) -> set[int]:
        """Every token id the task can feed the model: all splits' inputs and the special tokens."""
        ids = set(self.tokenizer.all_special_ids)
        for row in self.input_rows():
            ids.update(row)
        return ids

    def input_rows(self) -> Iterator[Sequence[int]]:
        """The ``input_ids`` of every sample of every split."""
        for samples in self.splits.values():
            for s in samples:
                yield s["input_ids"]

    def model_config(self) -> dict[str, Any]:
        from kelm.lm.hf import structure_of

        spec = {"kind": "hf", "head": self.head, "base": self.cfg.model, "max_length": self.max_length}
        spec["structure"] = structure_of(self.cfg.model)  # None (left out) unless pruned
        if self.labels is not None:
            spec["labels"] = list(self.labels)
        return {"task": self.name, "model": spec}

    def tokens(self, batch: Batch) -> int:
        """Non-pad tokens."""
        return int(batch["attention_mask"].sum())

    # -- data: ``self.splits`` maps train/dev/test to tokenized samples ----------------------------
    def train_data(self) -> Sequence[Any]:
        items = self.splits["train"]
        return Samples(items, [len(s["input_ids"]) for s in items] if self.cfg.group_by_length else None)

    def _held_out(self, split: str) -> Sequence[Any] | None:
        items = self.splits.get(split)
        return None if items is None else by_length(items, [len(s["input_ids"]) for s in items])

    def eval_data(self) -> Sequence[Any] | None:
        return self._held_out("dev")

    def test_data(self) -> Sequence[Any] | None:
        return self._held_out("test")

    # -- report ---------------------------------------------------------------------------------
    def report_title(self) -> str:
        return f"{self.name} report"

    def report_total(self) -> float:
        """Total weight of the set evaluated last (test if there is one, else dev): turns shares into counts."""
        return self._report_total

    def keep_for_report(self, per: dict[str, dict[str, float]]) -> None:
        self._last = per

    def save_artifacts(self, folder: Path) -> None:
        """``config.json`` and tokenizer files beside the weights; the report in the run folder."""
        from kelm.lm.hf import save_pretrained_files

        if self._hf_config is not None:
            save_pretrained_files(folder, self._hf_config, self.tokenizer)
        text = self.report_text()
        if text is not None:
            write_text_atomic(folder.parent / REPORT_FILE, text)

    def report_text(self) -> str | None:
        """The report of the last evaluation (per label or entity type), or None."""
        if self._last is None:
            return None
        return M.report_table(self._last, self.report_total(), self.report_title())


__all__ = [
    "FinetuneConfig",
    "HFTask",
    "REPORT_FILE",
    "Samples",
    "TruncationWarning",
    "by_length",
    "encode_inputs",
    "model_inputs",
    "pad",
    "split_files",
    "warn_truncated",
]
