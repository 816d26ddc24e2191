"""Sentences of words to the encoder's inputs: sub-word ids and each sub-word's word.

One path for training batches (`kelm.tasks.extraction`) and for inference (`Extractor`), so the
two can never encode a sentence differently.
"""

from __future__ import annotations

from typing import Any

import torch

from kelm.lm.batching import encode_inputs


def encode_sentence(tokenizer: Any, words: list[str], max_length: int) -> tuple[dict[str, Any], bool]:
    """Sub-word ids of one sentence, each token's word (-1 for special tokens) and the word
    count; and whether the sentence was cut to ``max_length`` tokens."""
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    sample = {"input_ids": enc["input_ids"], "word_of_token": [-1 if w is None else w for w in enc.word_ids()]}
    if "token_type_ids" in enc:
        sample["token_type_ids"] = enc["token_type_ids"]
    sample["n_words"] = len(words)
    return sample, bool(enc.encodings[0].overflowing)


def collate_inputs(samples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Padded encoder inputs, ``word_of_token`` (padding: -1) and ``n_words`` of encoded sentences."""
    batch = encode_inputs(samples, pad_id)
    T = batch["input_ids"].shape[1]
    batch["word_of_token"] = torch.tensor([s["word_of_token"] + [-1] * (T - len(s["word_of_token"])) for s in samples])
    batch["n_words"] = torch.tensor([s["n_words"] for s in samples])
    return batch


__all__ = ["collate_inputs", "encode_sentence"]
