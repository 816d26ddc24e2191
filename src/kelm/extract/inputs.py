"""Sentences of words to the encoder's inputs: sub-word ids, each sub-word's word, and each
word's shape (its capitalisation, which an uncased encoder never sees).

One path for training batches (`kelm.tasks.extraction`) and for inference (`Extractor`), so the
two can never encode a sentence differently.
"""

from __future__ import annotations

from typing import Any

import torch

from kelm.lm.batching import encode_inputs

#: Word shapes: 0 padding, then lower case, Capitalised, Capitalised first word, ALL CAPS, an
#: initial ("J" or "J."), mixed case ("McDonald", "iPhone"), with digits, punctuation.
SHAPES = ("pad", "lower", "title", "title-first", "upper", "initial", "mixed", "digit", "punct")


def word_shape(word: str, first: bool) -> int:
    """The `SHAPES` index of ``word`` (``first``: the sentence's first word)."""
    letters = [c for c in word if c.isalpha()]
    if any(c.isdigit() for c in word):
        return 7
    if not letters:
        return 8
    if all(c.islower() for c in letters):
        return 1
    if len(letters) == 1:
        return 5
    if all(c.isupper() for c in letters):
        return 4
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return 3 if first else 2
    return 6


def encode_sentence(tokenizer: Any, words: list[str], max_length: int) -> tuple[dict[str, Any], bool]:
    """Sub-word ids of one sentence, each token's word (-1 for special tokens) and the word
    count; and whether the sentence was cut to ``max_length`` tokens."""
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    sample = {"input_ids": enc["input_ids"], "word_of_token": [-1 if w is None else w for w in enc.word_ids()]}
    if "token_type_ids" in enc:
        sample["token_type_ids"] = enc["token_type_ids"]
    sample["n_words"] = len(words)
    sample["word_shapes"] = [word_shape(w, k == 0) for k, w in enumerate(words)]
    return sample, bool(enc.encodings[0].overflowing)


def collate_inputs(samples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Padded encoder inputs, ``word_of_token`` (padding: -1) and ``n_words`` of encoded sentences."""
    batch = encode_inputs(samples, pad_id)
    T = batch["input_ids"].shape[1]
    batch["word_of_token"] = torch.tensor([s["word_of_token"] + [-1] * (T - len(s["word_of_token"])) for s in samples])
    batch["n_words"] = torch.tensor([s["n_words"] for s in samples])
    N = max((s["n_words"] for s in samples), default=0)
    batch["word_shapes"] = torch.tensor([s["word_shapes"] + [0] * (N - s["n_words"]) for s in samples]).view(-1, N)
    return batch


__all__ = ["SHAPES", "collate_inputs", "encode_sentence", "word_shape"]
