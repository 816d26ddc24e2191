"""Modified Kneser-Ney n-gram models: normalisation, a reference implementation, ARPA, KenLM, CLI, errors."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kelm.errors import ConfigError, DataError
from kelm.lm import NgramLM, read_arpa, read_sentences, train_kneser_ney, write_arpa
from kelm.lm.ngram import FALLBACK_DISCOUNTS, modified_kn_discounts

TINY = """the cat sat on the mat
the dog sat on the log
a cat and a dog sat
the cat saw the dog on the mat
a dog saw a cat
the mat is on the log
the cat sat
"""


def _write(path: Path, sentences: list[list[str]]) -> Path:
    path.write_text("".join(" ".join(s) + "\n" for s in sentences), encoding="utf-8")
    return path


def poem_sentences(data_dir: Path, split: str) -> list[list[str]]:
    """The text column of poem-sentiment (``id<TAB>text<TAB>label``), lowercased and split on whitespace."""
    rows = (line.split("\t") for line in (data_dir / "cls/poem-sentiment" / f"{split}.tsv").read_text().splitlines())
    return [r[1].lower().split() for r in rows if len(r) == 3 and r[1].split()]


def wnut_sentences(data_dir: Path, split: str) -> list[list[str]]:
    """The tokens of WNUT-17 (``token<TAB>tag`` lines, a blank line between sentences)."""
    sentences, current = [], []
    for line in (data_dir / "ner/wnut17" / f"{split}.conll").read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line.split("\t")[0])
        elif current:
            sentences.append(current)
            current = []
    return sentences + ([current] if current else [])


def context_sums(model: NgramLM, chunk_rows: int = 500_000) -> list[np.ndarray]:
    """For each context length j < order: sum over the vocabulary of p(w | h) for every seen context h."""
    v, width, pred = len(model.vocab), model.order, model.predictable()
    sums = []
    for j in range(model.order):
        if j == 0:
            contexts = np.zeros((1, 0), dtype=np.int64)
        else:
            contexts = model.ngram_words(j)[np.unique(model.tables[j].keys // v)]
        per_chunk = max(1, chunk_rows // len(pred))
        out = []
        for start in range(0, len(contexts), per_chunk):
            ctx = contexts[start : start + per_chunk]
            hist = np.full((len(ctx) * len(pred), width - 1), -1, dtype=np.int64)
            if j:
                hist[:, width - 1 - j :] = np.repeat(ctx, len(pred), axis=0)
            windows = np.column_stack([hist, np.tile(pred, len(ctx))])
            out.append((10.0 ** model.log10_windows(windows)).reshape(len(ctx), len(pred)).sum(axis=1))
        sums.append(np.concatenate(out) if out else np.ones(0))
    return sums


def reference_kn(sentences: list[list[str]], order: int):
    """A direct, dictionary-based interpolated modified Kneser-Ney, written from the formulas."""
    raw = [Counter() for _ in range(order + 1)]
    for s in sentences:
        toks = ["<s>", *s, "</s>"]
        for k in range(1, order + 1):
            for i in range(len(toks) - k + 1):
                raw[k][tuple(toks[i : i + k])] += 1
    adj: list[dict] = [{}]
    for k in range(1, order + 1):
        if k == order:
            adj.append(dict(raw[k]))
            continue
        left = Counter(g[1:] for g in raw[k + 1])
        adj.append({g: (c if g[0] == "<s>" else left[g]) for g, c in raw[k].items()})
    adj[1].pop(("<s>",), None)
    disc = [None] + [modified_kn_discounts(np.array([c for c in a.values() if c > 0])) for a in adj[1:]]
    vocab = sorted({w for s in sentences for w in s} | {"</s>", "<unk>"})

    def d_of(k: int, c: int) -> float:
        return 0.0 if c == 0 else disc[k][min(c, 3) - 1]

    totals = [Counter() for _ in range(order + 1)]
    gammas = [Counter() for _ in range(order + 1)]
    for k in range(1, order + 1):
        for g, c in adj[k].items():
            totals[k][g[:-1]] += c
            gammas[k][g[:-1]] += d_of(k, c)

    def prob(w: str, h: tuple) -> float:
        k = len(h) + 1
        total = totals[k].get(h, 0)
        lower = 1.0 / len(vocab) if k == 1 else prob(w, h[1:])
        if total == 0:
            return lower
        c = adj[k].get((*h, w), 0)
        return (c - d_of(k, c)) / total + gammas[k][h] / total * lower

    contexts = [h for k in range(1, order + 1) for h in totals[k]]
    return prob, vocab, contexts


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_matches_reference_implementation(order):
    sentences = [line.split() for line in TINY.splitlines()] * 2 + [["the", "dog", "and", "the", "cat"]]
    model = train_kneser_ney(sentences, order=order)
    prob, vocab, contexts = reference_kn(sentences, order)
    rows, expected = [], []
    for h in contexts:
        for w in vocab:
            ids = [model.index[x] for x in (*h, w)]
            rows.append([-1] * (order - len(ids)) + ids)
            expected.append(prob(w, h))
    got = 10.0 ** model.log10_windows(np.array(rows))
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_discounts_from_count_of_counts():
    counts = np.array([1] * 10 + [2] * 4 + [3] * 3 + [4] * 2 + [7])
    y = 10 / (10 + 2 * 4)
    expected = (1 - 2 * y * 4 / 10, 2 - 3 * y * 3 / 4, 3 - 4 * y * 2 / 3)
    np.testing.assert_allclose(modified_kn_discounts(counts), expected)
    assert modified_kn_discounts(np.array([1, 1, 2])) == FALLBACK_DISCOUNTS  # no count of 3


@pytest.fixture(scope="module")
def poem_model(data_dir, tmp_path_factory):
    sentences = poem_sentences(data_dir, "dev") + poem_sentences(data_dir, "test")
    model = train_kneser_ney(sentences, order=3, lowercase=True)
    path = tmp_path_factory.mktemp("ngram") / "poem.arpa"
    write_arpa(model, path)
    return model, read_arpa(path), sentences


def test_distributions_sum_to_one(poem_model):
    model, loaded, _ = poem_model
    for m in (model, loaded):
        sums = context_sums(m)
        assert [len(s) for s in sums][0] == 1 and all(len(s) > 100 for s in sums[1:])
        for s in sums:
            np.testing.assert_allclose(s, 1.0, atol=1e-6)


@pytest.mark.parametrize("corpus", [TINY, "x\nx\nx\ny z\n"])  # the second has no 4- or 5-grams
def test_order_five_sums_to_one(tmp_path, corpus):
    sentences = [line.split() for line in corpus.splitlines()]
    model = train_kneser_ney(sentences, order=5)
    write_arpa(model, tmp_path / "m.arpa")
    loaded = read_arpa(tmp_path / "m.arpa")
    assert loaded.counts() == model.counts()
    assert loaded.perplexity(sentences) == pytest.approx(model.perplexity(sentences), rel=1e-7)
    for m in (model, loaded):
        for s in context_sums(m):
            np.testing.assert_allclose(s, 1.0, atol=1e-6)


def test_arpa_round_trip(poem_model, data_dir, tmp_path):
    model, loaded, _ = poem_model
    held_out = poem_sentences(data_dir, "train")[:300]
    assert loaded.counts() == model.counts() and loaded.vocab == model.vocab and loaded.lowercase
    assert loaded.perplexity(held_out) == pytest.approx(model.perplexity(held_out), rel=1e-7)
    write_arpa(loaded, tmp_path / "again.arpa")  # a loaded model writes the same file again
    assert read_arpa(tmp_path / "again.arpa").perplexity(held_out) == pytest.approx(loaded.perplexity(held_out))


def test_train_text_beats_shuffled_words(data_dir):
    sentences = poem_sentences(data_dir, "train")
    model = train_kneser_ney(sentences, order=3)
    words = [w for s in sentences for w in s]
    random.Random(0).shuffle(words)
    it = iter(words)
    shuffled = [[next(it) for _ in s] for s in sentences]
    assert model.perplexity(sentences) < 0.5 * model.perplexity(shuffled)


def test_oov_scores_as_unk():
    model = train_kneser_ney([line.split() for line in TINY.splitlines()], order=3)
    report = model.score_sentences([["the", "zebra", "sat"], ["a", "cat"]])
    assert (report.words, report.sentences, report.oov) == (7, 2, 1)
    unk = model.tables[0].log10_prob[model.unk]
    assert math.isfinite(unk) and unk < model.tables[0].log10_prob[model.index["cat"]]
    assert report.perplexity_without_oov < report.perplexity


def test_kenlm_agrees_on_held_out_text(data_dir, tmp_path):
    """KenLM loads kelm's ARPA file and must give the same perplexity.

    Needs the optional ``kenlm`` Python module (``pip install kenlm``, built from source); skipped without it.
    """
    try:
        import kenlm
    except ImportError:
        pytest.skip("the kenlm module is not installed (pip install kenlm)")
    train = wnut_sentences(data_dir, "train")
    held_out = wnut_sentences(data_dir, "dev")
    for order in (2, 3, 5):
        model = train_kneser_ney(train, order=order)
        write_arpa(model, tmp_path / f"{order}.arpa")
        ken = kenlm.Model(str(tmp_path / f"{order}.arpa"))
        ours = model.score_sentences(held_out)
        theirs = [ken.score(" ".join(s), bos=True, eos=True) for s in held_out]
        assert 10.0 ** (-sum(theirs) / ours.words) == pytest.approx(ours.perplexity, rel=1e-4)
        per_sentence = [model.score_sentences([s]).log10_prob for s in held_out[:200]]
        np.testing.assert_allclose(per_sentence, theirs[:200], atol=1e-3)
        oov = sum(o for s in held_out for _, _, o in ken.full_scores(" ".join(s)))
        assert oov == ours.oov


def test_bad_input(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="empty.txt"):
        read_sentences([empty])
    with pytest.raises(DataError, match="missing.txt"):
        read_sentences([tmp_path / "missing.txt"])
    reserved = tmp_path / "reserved.txt"
    reserved.write_text("a b\nc </s> d\n")
    with pytest.raises(DataError, match="reserved.txt:2"):
        read_sentences([reserved])
    for order in (0, 6, -1):
        with pytest.raises(ConfigError, match="order"):
            train_kneser_ney([["a", "b"]], order=order)
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0\t<s>\n")
    with pytest.raises(DataError, match="bad.arpa"):
        read_arpa(bad)
    with pytest.raises(DataError, match="expected"):
        read_arpa(reserved)


def test_cli_train_and_score(tmp_path, capsys):
    from kelm.cli import main

    text = tmp_path / "train.txt"
    text.write_text(TINY.upper())
    arpa = tmp_path / "m.arpa"
    assert main(["ngram", "train", str(text), "--order", "3", "--out", str(arpa), "--lowercase", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["ngrams"]["1"] == 14 and trained["train"]["perplexity"] > 1
    assert main(["ngram", "score", "--model", str(arpa), str(text), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["oov"] == 0 and scored["perplexity"] == pytest.approx(trained["train"]["perplexity"], rel=1e-6)
    assert main(["ngram", "score", "--model", str(arpa), str(text)]) == 0
    assert "perplexity" in capsys.readouterr().out
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["ngram", "train", str(empty), "--out", str(tmp_path / "x.arpa")]) == 1
    assert "empty.txt: empty file" in capsys.readouterr().err
    assert main(["ngram", "train", str(text), "--order", "6", "--out", str(tmp_path / "x.arpa")]) == 2
    assert not (tmp_path / "x.arpa").exists()
