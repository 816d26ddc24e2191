"""kelm's modified Kneser-Ney n-gram model vs NLTK's ``nltk.lm.KneserNeyInterpolated``, same corpus.

    KELM_DATA_DIR=../shared/data python bench/ngram_vs_nltk.py [--order 3] [--train-sentences N]
        [--test-sentences 200] [--scale-tokens 1000000] [--json]

Corpus: the tokens of WNUT-17 (``ner/wnut17/*.conll``; train split for training, dev for the
held-out text), whitespace tokens as given, case kept. NLTK's KN scores one word at a time in
pure Python and is very slow (about 25 ms per word here), so the held-out text is cut to
``--test-sentences`` (the first 200 dev sentences by default) to keep NLTK under two minutes.

Both models see the same token lists. Times exclude reading the files. NLTK "train" is
``padded_everygram_pipeline`` + ``fit`` (counting); kelm "train" is counting plus the whole
estimation (discounts, interpolated probabilities and back-off weights), without writing ARPA
(timed apart). Scoring is every word of the held-out text plus ``</s>``, in order-``N`` context
with ``<s>`` padding; perplexity is per scored word (``</s>`` included, ``<s>`` not), as KenLM.

The models differ, so their perplexities are not expected to agree: NLTK's KN uses one fixed
discount (0.1) for every order and count, kelm (like KenLM) three discounts per order estimated
from count-of-counts and continuation counts for lower orders. Out-of-vocabulary words: kelm
scores them as ``<unk>`` (interpolation mass of the uniform distribution); NLTK maps them to its
``<UNK>`` too, but its score for them can be 0, i.e. infinite perplexity. So perplexities are
reported over all scored words and over the scored words whose n-gram (word and its ``N-1``
context words) holds no OOV word: the same events for both models.

``--scale-tokens N`` also times kelm alone on the whole training split repeated up to N tokens
(an artificial corpus, only for throughput).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit  # noqa: E402

from kelm.lm import train_kneser_ney, write_arpa  # noqa: E402


def wnut(data_dir: Path, split: str) -> list[list[str]]:
    sentences, current = [], []
    for line in (data_dir / "ner/wnut17" / f"{split}.conll").read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line.split("\t")[0])
        elif current:
            sentences.append(current)
            current = []
    return sentences + ([current] if current else [])


def nltk_run(train: list[list[str]], held: list[list[str]], order: int) -> dict:
    from nltk.lm import KneserNeyInterpolated
    from nltk.lm.preprocessing import padded_everygram_pipeline

    t0 = time.perf_counter()
    grams, vocab = padded_everygram_pipeline(order, train)
    lm = KneserNeyInterpolated(order)
    lm.fit(grams, vocab)
    out: dict = {"train_seconds": round(time.perf_counter() - t0, 3)}
    known = {w for s in train for w in s} | {"<s>", "</s>"}
    t0 = time.perf_counter()
    logs, in_vocab = [], []
    for s in held:
        padded = ["<s>"] * (order - 1) + s + ["</s>"]
        for i in range(order - 1, len(padded)):
            p = lm.score(padded[i], padded[i - order + 1 : i])
            logs.append(math.log10(p) if p > 0 else -math.inf)
            in_vocab.append(all(w in known for w in padded[i - order + 1 : i + 1]))
    out["score_seconds"] = round(time.perf_counter() - t0, 3)
    out.update(_perplexities(np.array(logs), np.array(in_vocab)))
    return out


def _perplexities(log10: np.ndarray, in_vocab: np.ndarray) -> dict:
    """Perplexity over all scored words, and over the words whose n-gram has no OOV word."""
    return {
        "perplexity_all": float(10.0 ** (-log10.mean())),
        "perplexity_in_vocab": float(10.0 ** (-log10[in_vocab].mean())),
        "words_all": len(log10),
        "words_in_vocab": int(in_vocab.sum()),
    }


def kelm_run(train: list[list[str]], held: list[list[str]], order: int, arpa: Path) -> dict:
    t0 = time.perf_counter()
    model = train_kneser_ney(train, order=order)
    out: dict = {"train_seconds": round(time.perf_counter() - t0, 4), "ngrams": model.counts()}
    t0 = time.perf_counter()
    write_arpa(model, arpa)
    out["arpa_write_seconds"] = round(time.perf_counter() - t0, 4)
    t0 = time.perf_counter()
    report = model.score_sentences(held)
    out["score_seconds"] = round(time.perf_counter() - t0, 4)
    windows, _ = model.sentence_windows(held)  # the same events again, to split off those with OOV words
    log10 = model.log10_windows(windows)
    assert abs(log10.sum() - report.log10_prob) < 1e-6 * abs(report.log10_prob)
    out.update(_perplexities(log10, ~(windows == model.unk).any(axis=1)))
    out["oov"] = report.oov
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", type=int, default=3)
    parser.add_argument("--train-sentences", type=int, default=None, help="default: the whole train split")
    parser.add_argument("--test-sentences", type=int, default=200)
    parser.add_argument("--scale-tokens", type=int, default=0, help="also time kelm on ~N tokens")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data_dir = Path(os.environ.get("KELM_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    train = wnut(data_dir, "train")[: args.train_sentences]
    held = wnut(data_dir, "dev")[: args.test_sentences]
    results: dict = {
        "corpus": "wnut17 tokens",
        "order": args.order,
        "train_sentences": len(train),
        "train_tokens": sum(map(len, train)),
        "test_sentences": len(held),
        "test_tokens": sum(map(len, held)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        results["kelm"] = kelm_run(train, held, args.order, Path(tmp) / "m.arpa")
        results["nltk"] = nltk_run(train, held, args.order)
        if args.scale_tokens:
            full = wnut(data_dir, "train")
            n = sum(map(len, full))
            big = full * max(1, round(args.scale_tokens / n))
            scale = kelm_run(big, wnut(data_dir, "dev"), args.order, Path(tmp) / "big.arpa")
            results["kelm_scale"] = {"train_tokens": sum(map(len, big)), **scale}
    k, n = results["kelm"], results["nltk"]
    results["speedup"] = {
        "train": round(n["train_seconds"] / k["train_seconds"], 1),
        "score": round(n["score_seconds"] / k["score_seconds"], 1),
    }
    emit("ngram_vs_nltk", results, args.json)


if __name__ == "__main__":
    main()
