"""Extractive question answering on SQuAD-format JSON files.

Each question and its context become one or more *features*: the tokenizer cuts a long context
into windows of ``max_length`` tokens that overlap by ``doc_stride`` tokens, and offset mappings
tie every context token back to its characters. A training feature's target is the token span of
the first gold answer, or the ``[CLS]`` position when the answer is not inside that window.

Evaluation works per question (all its features stay in one batch, so ranks never split a
question): the answer is the best-scoring span (start logit + end logit, start <= end, at most
``max_answer_length`` tokens, context tokens only) over all windows, cut from the context by
character offsets. Metrics are SQuAD's exact match and token F1 after its normalisation,
maxima over the gold answers, averaged over questions. With ``null_answers`` (SQuAD 2.0)
questions without answers are allowed and "no answer" wins when the ``[CLS]`` score beats the
best span.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kelm.errors import ConfigError, DataError
from kelm.lm import metrics as M
from kelm.lm.batching import Samples, encode_inputs, model_inputs
from kelm.tasks.finetune import FinetuneConfig, HFTask, split_files
from kelm.train.task import Batch


class QAConfig(FinetuneConfig):
    """``[task]`` for ``qa``."""

    name: Literal["qa"] = "qa"
    max_length: int | None = Field(384, ge=16)
    doc_stride: int = Field(128, ge=1, description="tokens shared by consecutive windows of a long context")
    max_answer_length: int = Field(30, ge=1, description="longest predicted answer, in tokens")
    n_best: int = Field(20, ge=1, description="start and end candidates considered per window")
    null_answers: bool = Field(False, description="allow questions without an answer (SQuAD 2.0)")


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]] = field(default_factory=list)  # (text, character start)


def read_squad(path: Path, require_answers: bool = True, allow_empty: bool = False) -> list[QAExample]:
    """Questions of a SQuAD-format file (``{"data": [{"paragraphs": [{"context", "qas"}]}]}``)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON: {err.msg}", path, err.lineno) from None
    except UnicodeDecodeError:
        raise DataError("invalid UTF-8", path) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError('not SQuAD format: expected {"data": [...]} at the top level', path)
    examples: list[QAExample] = []
    for a, article in enumerate(doc["data"]):
        for p, para in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else []):
            where = f"data[{a}].paragraphs[{p}]"
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str) or not context.strip():
                raise DataError(f"{where}: missing or empty context", path)
            for q, qa in enumerate(para.get("qas", [])):
                qid = str(qa.get("id", f"{where}.qas[{q}]"))
                question = qa.get("question")
                if not isinstance(question, str) or not question.strip():
                    raise DataError(f"question {qid}: missing or empty question", path)
                answers = []
                for ans in qa.get("answers", []):
                    text, start = ans.get("text"), ans.get("answer_start")
                    if not isinstance(text, str) or not isinstance(start, int):
                        raise DataError(f"question {qid}: an answer needs 'text' and an integer 'answer_start'", path)
                    if context[start : start + len(text)] != text:
                        raise DataError(
                            f"question {qid}: answer_start {start} does not point at the answer text {text!r}", path
                        )
                    answers.append((text, start))
                if require_answers and not answers and not (allow_empty and qa.get("is_impossible", True)):
                    raise DataError(f"question {qid} has no answer (set task.null_answers for SQuAD 2.0)", path)
                examples.append(QAExample(qid, question.strip(), context, answers))
    if not examples:
        raise DataError("no questions", path)
    return examples


# -- features -------------------------------------------------------------------------------------
def make_features(
    tokenizer: Any, examples: list[QAExample], max_length: int, doc_stride: int
) -> list[list[dict[str, Any]]]:
    """The windows of each example: ids, context-only offsets and the target token span."""
    if doc_stride >= max_length // 2:
        raise ConfigError(f"task.doc_stride ({doc_stride}) must be less than half of max_length ({max_length})")
    pad_right = tokenizer.padding_side == "right"
    enc = tokenizer(
        [e.question for e in examples] if pad_right else [e.context for e in examples],
        [e.context for e in examples] if pad_right else [e.question for e in examples],
        truncation="only_second" if pad_right else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    context_id = 1 if pad_right else 0
    out: list[list[dict[str, Any]]] = [[] for _ in examples]
    for i, ex_idx in enumerate(enc["overflow_to_sample_mapping"]):
        seq = enc.sequence_ids(i)
        offsets = [o if seq[k] == context_id else None for k, o in enumerate(enc["offset_mapping"][i])]
        feature: dict[str, Any] = {"input_ids": enc["input_ids"][i], "offsets": offsets}
        if "token_type_ids" in enc:
            feature["token_type_ids"] = enc["token_type_ids"][i]
        ex = examples[ex_idx]
        feature["start"], feature["end"] = target_span(offsets, ex.answers[0] if ex.answers else None)
        out[ex_idx].append(feature)
    return out


def target_span(offsets: Sequence[tuple[int, int] | None], answer: tuple[str, int] | None) -> tuple[int, int]:
    """Token positions of the answer's first and last token, or ``(0, 0)`` ([CLS]) if not in this window."""
    if answer is None:
        return 0, 0
    text, s_char = answer
    e_char = s_char + len(text)
    ctx = [k for k, o in enumerate(offsets) if o is not None]
    if not ctx or offsets[ctx[0]][0] > s_char or offsets[ctx[-1]][1] < e_char:  # type: ignore[index]
        return 0, 0
    start = next(k for k in ctx if offsets[k][1] > s_char)  # type: ignore[index]
    end = next(k for k in reversed(ctx) if offsets[k][0] < e_char)  # type: ignore[index]
    return start, end


def best_span(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    offsets: Sequence[tuple[int, int] | None],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> tuple[float, int, int] | None:
    """``(score, first char, end char)`` of the best context span of one window, or None."""
    n = min(n_best, len(offsets))
    starts = start_logits[: len(offsets)].topk(n).indices.tolist()
    ends = end_logits[: len(offsets)].topk(n).indices.tolist()
    best: tuple[float, int, int] | None = None
    for s in starts:
        if offsets[s] is None:
            continue
        for e in ends:
            if offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[0]:
                best = (score, offsets[s][0], offsets[e][1])  # type: ignore[index]
    return best


def pick_answer(
    context: str,
    windows: Sequence[tuple[torch.Tensor, torch.Tensor, Sequence[tuple[int, int] | None]]],
    n_best: int,
    max_answer_length: int,
    null_answers: bool,
) -> str:
    """The best answer over an example's windows ("" for no answer)."""
    best: tuple[float, int, int] | None = None
    null = None
    for start, end, offsets in windows:
        cand = best_span(start, end, offsets, n_best, max_answer_length)
        if cand is not None and (best is None or cand[0] > best[0]):
            best = cand
        score = float(start[0] + end[0])
        null = score if null is None else min(null, score)
    if best is None or (null_answers and null is not None and null > best[0]):
        return ""
    return context[best[1] : best[2]]


# -- the task -------------------------------------------------------------------------------------
class QATask(HFTask):
    config_class = QAConfig
    name = "qa"
    head = "qa"
    monitor = "f1"
    monitor_mode = "max"

    def __init__(self, cfg: QAConfig):
        super().__init__(cfg)
        self.qa_cfg = cfg
        files = split_files(cfg, "json")
        self.examples = {
            split: read_squad(
                path, require_answers=split == "train" or not cfg.null_answers, allow_empty=cfg.null_answers
            )
            for split, path in files.items()
            if path is not None
        }
        self.features = {
            split: make_features(self.tokenizer, exs, self.max_length, cfg.doc_stride)
            for split, exs in self.examples.items()
        }
        self._last_plain: dict[str, float] | None = None

    def model_config(self) -> dict[str, Any]:
        config = super().model_config()
        c = self.qa_cfg
        config["model"].update(
            doc_stride=c.doc_stride, max_answer_length=c.max_answer_length, n_best=c.n_best, null_answers=c.null_answers
        )
        return config

    # -- data -----------------------------------------------------------------------------------
    def input_rows(self) -> Iterator[Sequence[int]]:
        for per_split in self.features.values():
            for feats in per_split:
                for f in feats:
                    yield f["input_ids"]

    def train_data(self) -> Sequence[Any]:
        items = [f for feats in self.features["train"] for f in feats]
        return Samples(items, [len(f["input_ids"]) for f in items] if self.cfg.group_by_length else None)

    def _held_out(self, split: str) -> Sequence[Any] | None:
        if split not in self.examples:
            return None
        items = [
            {"context": ex.context, "answers": [a for a, _ in ex.answers], "features": feats}
            for ex, feats in zip(self.examples[split], self.features[split], strict=True)
        ]
        items.sort(key=lambda x: -max(len(f["input_ids"]) for f in x["features"]))
        return Samples(items)

    def eval_data(self) -> Sequence[Any] | None:
        return self._held_out("dev")

    def test_data(self) -> Sequence[Any] | None:
        return self._held_out("test")

    def collate(self, samples: list[Any]) -> Batch:
        if samples and "features" in samples[0]:  # evaluation: whole questions
            feats = [f for s in samples for f in s["features"]]
            batch = self._features(feats)
            batch["owner"] = [i for i, s in enumerate(samples) for _ in s["features"]]
            batch["offsets"] = [f["offsets"] for f in feats]
            batch["contexts"] = [s["context"] for s in samples]
            batch["answers"] = [s["answers"] for s in samples]
            return batch
        return self._features(samples)

    def _features(self, feats: list[dict[str, Any]]) -> Batch:
        batch = encode_inputs(feats, self.tokenizer.pad_token_id)
        batch["start_positions"] = torch.tensor([f["start"] for f in feats], dtype=torch.int64)
        batch["end_positions"] = torch.tensor([f["end"] for f in feats], dtype=torch.int64)
        return batch

    def batch_weight(self, batch: Batch) -> int:
        """Questions in an evaluation batch, windows in a training batch."""
        return len(batch["contexts"]) if "contexts" in batch else len(batch["start_positions"])

    # -- loss and metrics -----------------------------------------------------------------------
    def _span_loss(self, out: Any, batch: Batch) -> torch.Tensor:
        start = F.cross_entropy(out.start_logits.float(), batch["start_positions"])
        end = F.cross_entropy(out.end_logits.float(), batch["end_positions"])
        return (start + end) / 2

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self._span_loss(model(**model_inputs(batch)), batch), {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        c = self.qa_cfg
        n = sum(self.batch_weight(b) for b in batches)
        em = f1 = loss = 0.0
        for b in batches:
            out = model(**model_inputs(b))
            loss += float(self._span_loss(out, b)) * len(b["contexts"])
            starts, ends = out.start_logits.float(), out.end_logits.float()
            windows: list[list[Any]] = [[] for _ in b["contexts"]]
            for k, owner in enumerate(b["owner"]):
                windows[owner].append((starts[k], ends[k], b["offsets"][k]))
            for context, wins, answers in zip(b["contexts"], windows, b["answers"], strict=True):
                pred = pick_answer(context, wins, c.n_best, c.max_answer_length, c.null_answers)
                e, f = M.squad_scores(pred, answers)
                em, f1 = em + e, f1 + f
        scale = 1.0 / n if n else 0.0
        return {"loss": loss * scale, "exact_match": em * scale, "f1": f1 * scale}

    def finalize_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        self._last_plain = dict(metrics)
        return metrics

    def report_text(self) -> str | None:
        if self._last_plain is None:
            return None
        split = "test" if "test" in self.examples else "dev"
        m = self._last_plain
        return (
            f"extractive QA report ({split} set, {len(self.examples[split])} questions, {self.cfg.model})\n\n"
            f"exact match  {m.get('exact_match', 0.0):.4f}\nF1           {m.get('f1', 0.0):.4f}\n"
        )


@torch.no_grad()
def answer_questions(
    model: nn.Module, tokenizer: Any, examples: list[QAExample], spec: dict[str, Any], batch_size: int = 16
) -> list[str]:
    """Answers of a fine-tuned span-extraction model (``spec``: the exported ``[model]`` table)."""
    max_length, stride = int(spec.get("max_length", 384)), int(spec.get("doc_stride", 128))
    n_best, max_answer = int(spec.get("n_best", 20)), int(spec.get("max_answer_length", 30))
    features = make_features(tokenizer, examples, max_length, stride)
    answers = []
    for lo in range(0, len(examples), batch_size):
        chunk = features[lo : lo + batch_size]
        flat = [f for feats in chunk for f in feats]
        out = model(**encode_inputs(flat, tokenizer.pad_token_id))
        k = 0
        for ex, feats in zip(examples[lo : lo + batch_size], chunk, strict=True):
            wins = [
                (out.start_logits[k + j].float(), out.end_logits[k + j].float(), f["offsets"])
                for j, f in enumerate(feats)
            ]
            k += len(feats)
            answers.append(pick_answer(ex.context, wins, n_best, max_answer, bool(spec.get("null_answers", False))))
    return answers


__all__ = ["QAConfig", "QAExample", "QATask", "answer_questions", "best_span", "make_features", "read_squad"]
