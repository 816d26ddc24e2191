"""Named-entity recognition (token classification) on CoNLL files of ``token<TAB>tag`` lines.

Sentences are separated by blank (or whitespace-only) lines; tags are BIO. Words are split into
sub-words by the model's tokenizer; only the first sub-word of each word carries the word's tag
(the others, and special tokens, get -100 and are ignored by the loss), and a word's prediction is
read from its first sub-word. Words cut off by the maximum length count as predicted ``O``, so
truncation lowers recall instead of hiding gold entities. Metrics are entity-level precision,
recall and F1 (seqeval's default CoNLL rules, micro-averaged over types), exact across ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from kelm.errors import DataError
from kelm.lm import metrics as M
from kelm.lm.batching import encode_inputs, model_inputs, pad
from kelm.tasks.finetune import FinetuneConfig, HFTask, split_files, warn_truncated
from kelm.train.task import Batch

IGNORE = -100


class NERConfig(FinetuneConfig):
    """``[task]`` for ``ner``."""

    name: Literal["ner"] = "ner"


def read_conll(path: Path) -> list[tuple[list[str], list[str], int]]:
    """``(words, tags, first line)`` per sentence of a ``token<TAB>tag`` CoNLL file."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError("invalid UTF-8", path, data[: err.start].count(b"\n") + 1) from None
    sentences: list[tuple[list[str], list[str], int]] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            if words:
                sentences.append((words, tags, start))
            words, tags = [], []
            continue
        parts = raw.split("\t") if "\t" in raw else raw.split()
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise DataError(f"expected 'token<TAB>tag', found {len(parts)} column(s)", path, n)
        tag = parts[1].strip()
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
            raise DataError(f"tag '{tag}' is not O, B-TYPE or I-TYPE", path, n)
        if not words:
            start = n
        words.append(parts[0].strip())
        tags.append(tag)
    if words:
        sentences.append((words, tags, start))
    if not sentences:
        raise DataError("no sentences", path)
    return sentences


def align(word_ids: Sequence[int | None], word_labels: Sequence[int]) -> list[int]:
    """Token labels: a word's label on its first sub-word, -100 on other sub-words and special tokens."""
    out, prev = [], None
    for w in word_ids:
        out.append(IGNORE if w is None or w == prev else word_labels[w])
        if w is not None:
            prev = w
    return out


def first_subwords(word_ids: Sequence[int | None], n_words: int) -> list[int]:
    """Token position of each word's first sub-word; -1 for words cut off by truncation."""
    pos = [-1] * n_words
    for i, w in enumerate(word_ids):
        if w is not None and pos[w] < 0:
            pos[w] = i
    return pos


def encode_words(tokenizer: Any, sentences: list[list[str]], max_length: int) -> tuple[list[dict[str, Any]], int]:
    """Token ids and word-to-first-sub-word positions per sentence; and how many were cut."""
    enc = tokenizer(sentences, is_split_into_words=True, truncation=True, max_length=max_length)
    out, cut = [], 0
    for i, words in enumerate(sentences):
        word_ids = enc.word_ids(i)
        sample: dict[str, Any] = {"input_ids": enc["input_ids"][i], "word_ids": word_ids}
        if "token_type_ids" in enc:
            sample["token_type_ids"] = enc["token_type_ids"][i]
        sample["first"] = first_subwords(word_ids, len(words))
        cut += bool(enc.encodings[i].overflowing)
        out.append(sample)
    return out, cut


def words_to_tags(logits: torch.Tensor, first: Sequence[int], labels: Sequence[str]) -> list[str]:
    """Word tags from one sentence's token logits, read at each word's first sub-word (``O`` if cut off)."""
    best = logits.argmax(-1).tolist()
    return [labels[best[p]] if p >= 0 else "O" for p in first]


class NERTask(HFTask):
    config_class = NERConfig
    name = "ner"
    head = "ner"
    monitor = "f1"
    monitor_mode = "max"

    def __init__(self, cfg: NERConfig):
        super().__init__(cfg)
        files = split_files(cfg, "conll")
        raw = {split: read_conll(path) for split, path in files.items() if path is not None}
        tags = {t for _, ts, _ in raw["train"] for t in ts}
        types = M.entity_types(tags)
        for split in ("dev", "test"):  # entity types only seen in dev/test still get labels
            for _, ts, line in raw.get(split, []):
                for k, t in enumerate(ts):
                    if t != "O" and t.split("-", 1)[1] not in types:
                        raise DataError(f"entity type of '{t}' does not occur in training", files[split], line + k)
        self.labels = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
        self.types = types
        index = {label: i for i, label in enumerate(self.labels)}
        self.splits: dict[str, list[dict[str, Any]]] = {}
        truncated: dict[str, tuple[int, int]] = {}
        for split, sents in raw.items():
            samples, n_cut = encode_words(self.tokenizer, [w for w, _, _ in sents], self.max_length)
            for s, (_, ts, _) in zip(samples, sents, strict=True):
                s["tags"] = ts
                s["labels"] = align(s.pop("word_ids"), [index[t] for t in ts])
            self.splits[split] = samples
            truncated[split] = (n_cut, len(samples))
        warn_truncated(truncated, self.max_length)

    # -- data ---------------------------------------------------------------------------------
    def collate(self, samples: list[Any]) -> Batch:
        batch = encode_inputs(samples, self.tokenizer.pad_token_id)
        batch["labels"] = pad([s["labels"] for s in samples], IGNORE)
        batch["first"] = [s["first"] for s in samples]
        batch["tags"] = [s["tags"] for s in samples]
        return batch

    def batch_weight(self, batch: Batch) -> int:
        """Labelled tokens (words inside the maximum length): the loss is their mean."""
        return int((batch["labels"] != IGNORE).sum())

    # -- loss and metrics ---------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.gold_loss(model(**model_inputs(batch)).logits, batch), {}

    def gold_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Cross-entropy of token logits against the batch's labels (first sub-words only)."""
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        assert self.labels is not None
        n = sum(self.batch_weight(b) for b in batches)
        loss_sum, gold, pred = 0.0, [], []
        for b in batches:
            logits = model(**model_inputs(b)).logits.float()
            flat = F.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), ignore_index=IGNORE, reduction="sum")
            loss_sum += float(flat)
            for row, first, tags in zip(logits, b["first"], b["tags"], strict=True):
                pred.append(words_to_tags(row, first, self.labels))
                gold.append(tags)
        tp, n_pred, n_gold = M.entity_counts(gold, pred)
        return {"loss": loss_sum / n if n else 0.0} | M.count_stats(tp, n_pred, n_gold, self.types, n)

    def finalize_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        plain, per = M.split_stats(metrics)
        if not per:
            return metrics
        self.keep_for_report(per)
        split = "test" if "test" in self.splits else "dev"
        self._report_total = float(sum(sum(x != IGNORE for x in s["labels"]) for s in self.splits[split]))
        p, r, f = M.micro_prf(per)
        return plain | {"precision": p, "recall": r, "f1": f}

    def report_title(self) -> str:
        split = "test" if "test" in self.splits else "dev"
        return f"entity-level report ({split} set, {self.cfg.model}; support = gold entities)"


@torch.no_grad()
def tag_sentences(
    model: nn.Module, tokenizer: Any, sentences: list[list[str]], max_length: int, batch_size: int = 32
) -> list[list[str]]:
    """BIO tags per word with a fine-tuned token classifier."""
    labels = model.config.id2label
    names = [labels[i] for i in range(len(labels))]
    samples, _ = encode_words(tokenizer, sentences, max_length)
    out: list[list[str]] = []
    for lo in range(0, len(samples), batch_size):
        chunk = samples[lo : lo + batch_size]
        logits = model(**encode_inputs(chunk, tokenizer.pad_token_id)).logits.float()
        out += [words_to_tags(row, s["first"], names) for row, s in zip(logits, chunk, strict=True)]
    return out


def entities(words: list[str], tags: list[str]) -> list[tuple[str, str]]:
    """``(type, text)`` of each entity in a tagged sentence."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(t, " ".join(words[s : e + 1])) for t, s, e in get_entities(list(tags))]


__all__ = ["NERConfig", "NERTask", "align", "entities", "first_subwords", "read_conll", "tag_sentences"]
