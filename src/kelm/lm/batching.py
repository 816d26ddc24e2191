"""Batches of token ids for Hugging Face models: dynamic padding and length grouping.

Batches are padded to their own longest sequence. `Samples` with lengths carry
``group_lengths`` (`kelm.train.data.LengthGrouped`), which the engine's loader uses to sort each
window of global batches by length before cutting batches, so little compute goes to padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kelm.train.task import Batch


class Samples(Sequence[Any]):
    """A list of samples; with ``lengths`` it asks the loader to group batches by length."""

    def __init__(self, items: list[Any], lengths: list[int] | None = None):
        self.items = items
        if lengths is not None:
            self.group_lengths = torch.tensor(lengths, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return self.items[i]


def by_length(items: list[Any], lengths: list[int]) -> Samples:
    """Held-out samples sorted by length (longest first), so evaluation batches pad little."""
    order = sorted(range(len(items)), key=lambda i: -lengths[i])
    return Samples([items[i] for i in order])


def pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad integer rows to the longest one."""
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=torch.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.int64)
    return out


def encode_inputs(samples: list[dict[str, Any]], pad_id: int) -> Batch:
    """``input_ids``, ``attention_mask`` (and ``token_type_ids`` when samples have them), padded per batch."""
    ids = [s["input_ids"] for s in samples]
    batch: Batch = {"input_ids": pad(ids, pad_id), "attention_mask": pad([[1] * len(r) for r in ids], 0)}
    if samples and "token_type_ids" in samples[0]:
        batch["token_type_ids"] = pad([s["token_type_ids"] for s in samples], 0)
    return batch


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: Batch) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}
