"""Plain-text corpora for pretraining: tokenize once, cache, pack into fixed blocks.

A corpus is text files or folders (their ``*.txt``, sorted). Documents are separated by blank
lines (and files end a document); each non-empty line is tokenized without special tokens, and a
separator token (the tokenizer's EOS, else SEP) closes every document. The token stream is cached
as int32 safetensors under ``CACHE/tokens/KEY.safetensors``, where ``KEY`` hashes the tokenizer
(its full serialised form) and the bytes of every file, so a changed file or tokenizer is never
served stale; the cache file is written atomically, so concurrent ranks or a killed run never
leave a half-written one. `PackedBlocks` cuts the stream into blocks of ``block_size`` tokens
with no padding (the tail shorter than a block is dropped).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kelm.atomic import atomic_path
from kelm.errors import DataError
from kelm.lm.hf import quiet

TOKENIZE_BATCH = 2048


def corpus_files(paths: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*.txt"))
            if not found:
                raise DataError("folder holds no .txt files", p)
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError("text file not found", p)
    if not files:
        raise DataError("no text files given", "task.text")
    return files


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides the token ids: the serialised fast tokenizer and its class."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # truncation and padding settings change with use; they do not decide ids
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.eos_token_id, tokenizer.sep_token_id]).encode())
    return h.hexdigest()


def cache_key(files: list[Path], tokenizer: Any) -> str:
    h = hashlib.sha256(b"kelm-corpus-v1")
    h.update(tokenizer_fingerprint(tokenizer).encode())
    for f in files:
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:32]


def separator_id(tokenizer: Any) -> int:
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if sep is None:
        raise DataError("the tokenizer has neither an EOS nor a SEP token to separate documents", "task.model")
    return int(sep)


def tokenize_files(files: list[Path], tokenizer: Any) -> torch.Tensor:
    """The token stream of the corpus (int32), documents closed by the separator token."""
    sep = separator_id(tokenizer)
    out: list[int] = []
    for f in files:
        data = f.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError("invalid UTF-8", f, data[: err.start].count(b"\n") + 1) from None
        docs: list[list[str]] = [[]]
        for line in text.splitlines():
            if line.strip():
                docs[-1].append(line.strip())
            elif docs[-1]:
                docs.append([])
        lines = [(d, line) for d, doc in enumerate(docs) for line in doc]
        ids: list[list[int]] = []
        for lo in range(0, len(lines), TOKENIZE_BATCH):
            chunk = [line for _, line in lines[lo : lo + TOKENIZE_BATCH]]
            with quiet():  # long lines are fine here: the stream is cut into blocks later
                ids += tokenizer(chunk, add_special_tokens=False)["input_ids"]
        for k, (d, _) in enumerate(lines):
            out += ids[k]
            if k + 1 == len(lines) or lines[k + 1][0] != d:
                out.append(sep)
    if not out:
        raise DataError("the text corpus is empty", ", ".join(map(str, files)))
    return torch.tensor(out, dtype=torch.int32)


def load_corpus(paths: Sequence[str | Path], tokenizer: Any, cache_dir: str | Path | None) -> torch.Tensor:
    """The corpus token stream, from the cache when it holds this tokenizer and these file contents."""
    from safetensors.torch import load_file, save_file

    from kelm.data.resolve import cache_root

    files = corpus_files(paths)
    cache = cache_root(cache_dir) / "tokens" / f"{cache_key(files, tokenizer)}.safetensors"
    if cache.is_file():
        try:
            return load_file(str(cache))["tokens"]
        except Exception:  # a damaged cache file is rebuilt
            cache.unlink(missing_ok=True)
    tokens = tokenize_files(files, tokenizer)
    with atomic_path(cache) as tmp:
        save_file({"tokens": tokens}, str(tmp), metadata={"files": json.dumps([str(f) for f in files])})
    return tokens


class PackedBlocks(Sequence[tuple[int, torch.Tensor]]):
    """Blocks ``[start, start + size)`` of a token stream; each sample is ``(global index, block)``."""

    def __init__(self, tokens: torch.Tensor, size: int, first: int = 0, count: int | None = None):
        self.tokens, self.size, self.first = tokens, size, first
        self.count = len(tokens) // size - first if count is None else count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:  # type: ignore[override]
        if not 0 <= i < self.count:
            raise IndexError(i)
        k = self.first + i
        return k, self.tokens[k * self.size : (k + 1) * self.size].to(torch.int64)


def split_blocks(tokens: torch.Tensor, size: int, valid_fraction: float) -> tuple[PackedBlocks, PackedBlocks]:
    """Training blocks and the held-out tail (at least one block each)."""
    n = len(tokens) // size
    n_valid = max(1, round(n * valid_fraction))
    if n - n_valid < 1:
        raise DataError(
            f"corpus too small: {len(tokens)} tokens make {n} blocks of {size}; need at least 2", "task.text"
        )
    return PackedBlocks(tokens, size, 0, n - n_valid), PackedBlocks(tokens, size, n - n_valid, n_valid)


__all__ = ["PackedBlocks", "cache_key", "corpus_files", "load_corpus", "split_blocks", "tokenize_files"]
