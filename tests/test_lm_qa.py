"""Extractive QA: spans from offsets over doc-stride windows, SQuAD scoring, training, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from kelm.cli import main
from kelm.errors import DataError
from kelm.lm.metrics import exact_match, normalize_answer, squad_scores, token_f1
from kelm.tasks.qa import make_features, pick_answer, read_squad

PLACES = ["Oslo", "Lima", "Rome", "Cairo", "Quito", "Hanoi", "Dakar", "Perth"]
FILL = "Many people walk there in spring, and the old market sells bread, fish and tea every morning."


def squad(path: Path, n: int, seed: int, filler: int = 0) -> Path:
    """Countries with a capital and a river; questions ask for one of them (filler makes contexts long)."""
    rng = random.Random(seed)
    data = []
    for i in range(n):
        country, capital, river = f"Land{i}", rng.choice(PLACES), rng.choice(["Nile", "Volga", "Rhine", "Po"])
        pre = [FILL] * rng.randint(0, filler)
        first = " ".join(pre + [f"The capital of {country} is {capital}."])
        context = " ".join([first] + pre + [f"The river of {country} is the {river}."])
        c_start, r_start = len(first) - len(capital) - 1, context.rindex(f"the {river}")
        qas = [
            {"id": f"{i}c", "question": f"What is the capital of {country}?", "answers": [(capital, c_start)]},
            {"id": f"{i}r", "question": f"Which river flows in {country}?", "answers": [(f"the {river}", r_start)]},
        ]
        for qa in qas:
            qa["answers"] = [{"text": t, "answer_start": s} for t, s in qa["answers"]]
        data.append({"title": country, "paragraphs": [{"context": context, "qas": qas}]})
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def test_gold_logits_recover_the_answer_across_windows(tmp_path: Path) -> None:
    from kelm.lm.hf import load_tokenizer

    tok = load_tokenizer("tiny-bert")
    examples = read_squad(squad(tmp_path / "long.json", 12, 0, filler=3))
    features = make_features(tok, examples, max_length=64, doc_stride=16)
    assert max(len(f) for f in features) > 2  # long contexts are split into several windows
    later = 0
    for ex, feats in zip(examples, features, strict=True):
        windows = []
        for k, f in enumerate(feats):
            start, end = torch.full((len(f["input_ids"]),), -10.0), torch.full((len(f["input_ids"]),), -10.0)
            if f["start"] > 0:
                start[f["start"]], end[f["end"]] = 10.0, 10.0
                later += k > 0
            windows.append((start, end, f["offsets"]))
        assert any(f["start"] > 0 for f in feats)
        assert pick_answer(ex.context, windows, 20, 30, False) == ex.answers[0][0]
    assert later > 0  # some answers are found only in a later window


def test_squad_normalisation_and_scores() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the Nile.", "Nile") == 1.0
    assert token_f1("the big red dog", "red dog barked") == pytest.approx(2 / 3)
    assert squad_scores("Rome", ["Paris", "rome"]) == (1.0, 1.0)
    assert squad_scores("", []) == (1.0, 1.0)


def test_qa_trains_through_the_cli_and_predicts(tmp_path: Path, capsys) -> None:
    train, dev = squad(tmp_path / "train.json", 150, 1), squad(tmp_path / "dev.json", 20, 2)
    out = tmp_path / "run"
    cfg = tmp_path / "qa.toml"
    cfg.write_text(
        '[task]\nname = "qa"\nmodel = "tiny-bert"\nhidden_size = 64\nnum_layers = 2\nnum_heads = 2\n'
        "max_length = 64\ndoc_stride = 16\n"
        '[train]\nstrategy = "single"\nthreads = 2\ntensorboard = false\nlr = 0.003\nlog_every = 50\n'
        "warmup_steps = 10\n"
    )
    args = ["finetune", str(cfg), "--train", str(train), "--dev", str(dev), "--test", str(dev)]
    assert main(args + ["--epochs", "8", "--batch-size", "16", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"loss", "exact_match", "f1"}
    assert metrics["test"]["f1"] > 0.8, metrics["test"]
    assert "exact match" in (out / "classification_report.txt").read_text()
    probe = tmp_path / "q.txt"
    probe.write_text("What is the capital of Land7?\tThe capital of Land7 is Lima. The river of Land7 is the Po.\n")
    capsys.readouterr()
    assert main(["predict", "--model", str(out / "model"), str(probe)]) == 0
    assert capsys.readouterr().out.strip().split("\t")[1] == "Lima"


def test_bad_squad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [\n{"paragraphs": [}\n]}')
    with pytest.raises(DataError, match=r"bad.json:2: invalid JSON"):
        read_squad(bad)
    ctx = "The capital is Rome."
    doc = {
        "data": [
            {
                "paragraphs": [
                    {
                        "context": ctx,
                        "qas": [{"id": "q1", "question": "Capital?", "answers": [{"text": "Rome", "answer_start": 3}]}],
                    }
                ]
            }
        ]
    }
    bad.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"bad.json: question q1: answer_start 3 does not point at the answer"):
        read_squad(bad)
