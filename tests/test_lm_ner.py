"""NER: sub-word label alignment, word-level decoding, seqeval-equal metrics, training, bad input."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import torch

from kelm.app import run_training
from kelm.cli import main
from kelm.errors import DataError
from kelm.lm import metrics as M
from kelm.tasks import build_task
from kelm.tasks.ner import IGNORE, NERTask, align, encode_words, read_conll, words_to_tags

WORDS = ["Obama", "visited", "Jerusalemite", "#hashtags", "yesterday"]
TAGS = ["B-person", "O", "B-location", "O", "O"]


def test_first_subword_alignment_is_exact() -> None:
    from kelm.lm.hf import load_tokenizer

    tok = load_tokenizer("tiny-bert")
    (sample,), cut = encode_words(tok, [WORDS], 64)
    assert cut == 0
    tokens = tok.convert_ids_to_tokens(sample["input_ids"])
    assert tokens == ["[CLS]", "obama", "visited", "jerusalem", "##ite", "#", "hash", "##tag", "##s", "yesterday"] + [
        "[SEP]"
    ]
    labels = align(sample["word_ids"], [1, 0, 2, 0, 0])
    assert labels == [IGNORE, 1, 0, 2, IGNORE, 0, IGNORE, IGNORE, IGNORE, 0, IGNORE]
    assert sample["first"] == [1, 2, 3, 5, 9]
    # predictions map back to words through the first sub-words only
    names = ["O", "B-person", "B-location"]
    logits = torch.full((len(tokens), 3), -5.0)
    for pos, label in zip(range(len(tokens)), [0, 1, 0, 2, 1, 0, 2, 2, 2, 0, 1], strict=True):
        logits[pos, label] = 5.0  # continuation sub-words and specials predict noise
    assert words_to_tags(logits, sample["first"], names) == TAGS
    # a word cut off by the maximum length is predicted O
    (short,), cut = encode_words(tok, [WORDS], 6)
    assert cut == 1 and short["first"] == [1, 2, 3, -1, -1]


def test_entity_metrics_equal_seqeval_and_a_hand_count() -> None:
    from seqeval.metrics import f1_score, precision_score, recall_score

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "I-PER"]]
    tp, n_pred, n_gold = M.entity_counts(gold, pred)
    # gold: PER, LOC, ORG, PER; predicted: PER, ORG, ORG, PER (an I- start opens an entity); right: PER, ORG, PER
    assert (sum(tp.values()), sum(n_pred.values()), sum(n_gold.values())) == (3, 4, 4)
    per = {t: {"tp": tp[t], "pred": n_pred[t], "gold": n_gold[t]} for t in ("LOC", "ORG", "PER")}
    p, r, f = M.micro_prf(per)
    assert (p, r, f) == pytest.approx((0.75, 0.75, 0.75))
    assert p == pytest.approx(precision_score(gold, pred))
    assert r == pytest.approx(recall_score(gold, pred))
    assert f == pytest.approx(f1_score(gold, pred))


def conll(path: Path, n: int, seed: int) -> Path:
    """Sentences where capitalised names after 'met' are persons and after 'in' are locations."""
    rng = random.Random(seed)
    names, places = ["Alice", "Bob", "Carol", "Dave", "Erin"], ["Paris", "Oslo", "Lima", "Rome", "Cairo"]
    lines = []
    for _ in range(n):
        sent = [("i", "O"), ("met", "O"), (rng.choice(names), "B-person")]
        if rng.random() < 0.5:
            sent += [(rng.choice(names), "I-person")]
        sent += [("in", "O"), (rng.choice(places), "B-location"), ("today", "O")]
        lines += [f"{w}\t{t}" for w, t in sent] + [""]
    path.write_text("\n".join(lines))
    return path


def test_ner_learns_and_predicts(tmp_path: Path, capsys, monkeypatch) -> None:
    files = {s: str(conll(tmp_path / f"{s}.conll", n, i)) for i, (s, n) in enumerate([("train", 200), ("dev", 40)])}
    files["test"] = files["dev"]
    task = {"name": "ner", "model": "tiny-bert", "hidden_size": 64, "num_layers": 1, "num_heads": 2} | files
    train = {"strategy": "single", "threads": 2, "epochs": 4, "batch_size": 16, "lr": 3e-3, "tensorboard": False}
    out = tmp_path / "run"
    summary = run_training({"task": task, "train": train | {"log_every": 50}}, out)
    assert summary["test"]["f1"] > 0.9, summary["test"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"loss", "precision", "recall", "f1"}
    assert "person" in (out / "classification_report.txt").read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO("i met Carol in Oslo today\n\ni met Bob Dave in Rome today\n"))
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "--json"]) == 0  # no files: reads stdin
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["entities"] == [{"type": "person", "text": "Carol"}, {"type": "location", "text": "Oslo"}]
    assert second["tags"] == ["O", "O", "B-person", "I-person", "O", "B-location", "O"]


def test_malformed_conll_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "train.conll"
    bad.write_text("Paris\tB-location\nis\tO\n\nnice O extra\n")
    with pytest.raises(DataError, match=r"train.conll:4: expected 'token<TAB>tag'"):
        read_conll(bad)
    bad.write_text("Paris\tB-location\nis\tX-thing\n")
    with pytest.raises(DataError, match=r"train.conll:2: tag 'X-thing'"):
        read_conll(bad)
    args = ["finetune", "--task", "ner", "--model", "tiny-bert", "--train", str(bad)]
    code = main(args + ["--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and f"{bad}:2" in err


def test_wnut17_reads(data_dir: Path) -> None:
    task = build_task({"name": "ner", "dataset": "wnut17", "data_dir": str(data_dir)})
    assert isinstance(task, NERTask)
    assert task.types == ["corporation", "creative-work", "group", "location", "person", "product"]
    assert len(task.train_data()) == 3394 and len(task.eval_data()) == 1009 and len(task.test_data()) == 1287
    # whitespace-only lines separate sentences, like blank ones
    first = read_conll(data_dir / "ner" / "wnut17" / "train.conll")[0]
    assert first[0][:3] == ["@paulwalk", "It", "'s"] and first[1][14] == "B-location"
