"""kelm compress: int8, distillation, pruning and weight sharing of real fine-tuned runs, measured
and loadable; exact round trips of the pieces; bad input in one line, no half-written output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from kelm.app import run_training
from kelm.cli import main
from kelm.compress.int8 import dequantize_rows, quantize_rows
from kelm.compress.prune import keep_zeros, magnitude_prune, prune_structured, sparsity_of
from kelm.compress.students import alternate_layers, keep_layers, shared_student

TRAIN = {"strategy": "single", "threads": 2, "batch_size": 16, "lr": 1e-4, "epochs": 3, "warmup_steps": 10}
TRAIN |= {"log_every": 100, "tensorboard": False}


def tiny_bert(layers: int = 3, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=48, num_labels=3, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)  # fmt: skip
    return BertForSequenceClassification(cfg).eval()


def logits(model: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (4, 9), generator=g)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def record(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "compression.json").read_text())


@pytest.fixture(scope="module")
def teacher(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM fine-tuned for 3 epochs on poem-sentiment (negative, neutral, positive)."""
    out = tmp_path_factory.mktemp("compress") / "teacher"
    task = {"name": "classification", "dataset": "poem-sentiment", "model": "minilm", "drop_labels": ["2"]}
    run_training({"train": TRAIN, "task": task | {"max_length": 64}}, out)
    return out


# -- the pieces, exactly ---------------------------------------------------------------------------
def test_int8_rows_requantize_to_the_same_integers() -> None:
    w = torch.randn(64, 48) * torch.rand(64, 1) * 3
    q, s = quantize_rows(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert (dequantize_rows(q, s) - w).abs().max() <= s.max() / 2 + 1e-6
    q2, s2 = quantize_rows(dequantize_rows(q, s))
    assert torch.equal(q, q2) and torch.allclose(s, s2)


def test_students_built_from_all_teacher_layers_equal_the_teacher() -> None:
    teacher = tiny_bert(layers=4)
    assert torch.equal(logits(keep_layers(teacher, [0, 1, 2, 3])), logits(teacher))
    shared = shared_student(teacher, num_layers=4, groups=4)  # one group per layer: the same weights
    assert torch.allclose(logits(shared.eval()), logits(teacher), atol=1e-5)
    one = shared_student(teacher, num_layers=4, groups=1)
    assert sum(p.numel() for p in one.parameters()) < sum(p.numel() for p in teacher.parameters())
    assert alternate_layers(6, 3) == [1, 3, 5] and alternate_layers(6, 6) == list(range(6))


def test_structured_pruning_round_trips_and_removes_what_matters_least(tmp_path: Path) -> None:
    from kelm.lm.hf import load_compressed

    model = tiny_bert()
    heads = [torch.tensor([4.0, 1.0, 3.0, 2.0])] * 3
    units = [torch.arange(48, dtype=torch.float32)] * 3
    kept = prune_structured(model, (heads, units), head_ratio=0.5, ffn_ratio=0.25)
    assert kept == {"heads": [2, 2, 2], "ffn": [36, 36, 36]}
    layer = model.bert.encoder.layer[0]
    assert layer.attention.self.query.out_features == 2 * 8 and layer.output.dense.in_features == 36
    before = logits(model)
    from kelm.lm.hf import load_tokenizer, save_model_folder

    save_model_folder(tmp_path, model, load_tokenizer("tiny-bert"), {"model": {"kind": "hf", "structure": "pruned"}})
    again = load_compressed(BertForSequenceClassification, tmp_path, {"structure": "pruned"}).eval()
    assert torch.equal(logits(again), before)


def test_pruned_zeros_stay_zero_through_training() -> None:
    model = tiny_bert().train()
    zeros = magnitude_prune(model, 0.5)
    assert abs(sparsity_of(model) - 0.5) < 1e-3 and zeros > 0
    assert keep_zeros(model) == zeros
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ids = torch.randint(5, 120, (8, 7))
    for _ in range(5):
        loss = model(input_ids=ids, labels=torch.randint(0, 3, (8,))).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert abs(sparsity_of(model) - 0.5) < 1e-3


# -- whole runs ------------------------------------------------------------------------------------
def test_int8_keeps_the_metric_at_a_quarter_of_the_size(teacher: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "int8"
    assert main(["compress", str(teacher), "--method", "int8", "--backend", "torch", "--out", str(out)]) == 0
    r = record(out)
    o, c = r["original"], r["compressed"]
    assert r["ratios"]["size"] <= 0.3 and r["details"]["backend"] == "torch"
    assert abs(c["metrics"]["accuracy"] - o["metrics"]["accuracy"]) <= 3 / 104  # at most 3 of 104 test verses
    for m in (o, c):
        assert {"p50_ms", "p99_ms", "items_per_second"} <= set(m["latency"]["batch_32"])
    assert not any(p.name.startswith(".int8") for p in tmp_path.iterdir())  # no staging folder left
    capsys.readouterr()
    verses = tmp_path / "verses.txt"
    verses.write_text("with a sweet and gentle joy\nthe cold grave of my sorrow\n")
    assert main(["predict", "--model", str(teacher), str(verses)]) == 0
    float_labels = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert main(["predict", "--model", str(out), str(verses)]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()] == float_labels
    from serving import TOKEN, Server

    from kelm.app.serve import ServeSettings, create_app, load_service

    with Server(create_app([load_service(out)], None, ServeSettings(TOKEN))) as server:
        status, body, _ = server.call("POST", "/v1/classify", {"inputs": verses.read_text().splitlines()})
    assert status == 200 and [r["label"] for r in body["results"]] == float_labels
    # an int8 model can be neither trained nor compressed again
    assert main(["finetune", "--task", "classification", "--dataset", "poem-sentiment", "--model", str(out),
                 "--out", str(tmp_path / "again"), "--max-steps", "1"]) == 2  # fmt: skip
    assert "int8-quantized" in capsys.readouterr().err
    assert main(["compress", str(out), "--method", "prune", "--out", str(tmp_path / "p")]) != 0
    assert "already int8-quantized" in capsys.readouterr().err


def test_distilled_student_is_half_as_deep_and_keeps_most_of_the_metric(teacher: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "student"
    args = ["compress", str(teacher), "--method", "distill", "--layers", "3", "--hidden-weight", "1", "--out", str(out)]
    assert main(args) == 0
    r = record(out)
    o, c = r["original"]["metrics"], r["compressed"]["metrics"]
    assert c["macro_f1"] >= 0.85 * o["macro_f1"] and c["accuracy"] > 0.7  # majority class: 0.62 of test
    assert r["ratios"]["parameters"] < 0.8
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.num_hidden_layers == 3


def test_pruning_unstructured_and_structured(teacher: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    sparse = tmp_path / "sparse"
    assert main(["compress", str(teacher), "-m", "prune", "--sparsity", "0.5", "--epochs", "1", "-o", str(sparse)]) == 0
    r = record(sparse)
    assert abs(r["details"]["sparsity_after_recovery"] - 0.5) < 1e-3
    assert r["compressed"]["metrics"]["accuracy"] > 0.7
    AutoModelForSequenceClassification.from_pretrained(sparse / "model")
    narrow = tmp_path / "narrow"
    args = [
        "compress",
        str(teacher),
        "-m",
        "prune",
        "--heads",
        "0.5",
        "--ffn",
        "0.5",
        "--epochs",
        "1",
        "-o",
        str(narrow),
    ]
    assert main(args) == 0
    r = record(narrow)
    assert r["details"]["kept"] == {"heads": [6] * 6, "ffn": [768] * 6}
    assert r["ratios"]["parameters"] < 0.85 and r["compressed"]["metrics"]["accuracy"] > 0.7


def test_shared_weight_student(teacher: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "shared"
    args = ["compress", str(teacher), "-m", "share", "--layers", "3", "--hidden-weight", "1", "--lr", "2e-4"]
    assert main(args + ["-o", str(out)]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert type(model).__name__ == "AlbertForSequenceClassification" and model.config.num_hidden_groups == 1
    r = record(out)
    assert r["ratios"]["parameters"] < 0.7 and r["compressed"]["metrics"]["accuracy"] > 0.62


def test_report_and_bad_input(teacher: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "q"
    assert main(["compress", str(teacher), "-m", "int8", "-o", str(out)]) == 0  # auto: torch and torchao timed
    assert set(record(out)["details"]["backends"]) == {"torch", "torchao"}
    capsys.readouterr()
    assert main(["compress", "report", str(out), "--plot", str(tmp_path / "c.png")]) == 0
    text = capsys.readouterr().out
    assert "original" in text and "int8" in text and (tmp_path / "c.png").stat().st_size > 1000
    # out exists; unknown method; a folder that is not a compressed run
    assert main(["compress", str(teacher), "-m", "int8", "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["compress", str(teacher), "-m", "squeeze", "-o", str(tmp_path / "x")]) == 2
    assert main(["compress", "report", str(teacher)]) != 0
    assert "compression.json" in capsys.readouterr().err
    # a failure halfway (the teacher has 6 layers) leaves nothing behind
    bad = tmp_path / "bad"
    assert main(["compress", str(teacher), "-m", "distill", "--layers", "1,9", "-o", str(bad)]) == 2
    assert "layers" in capsys.readouterr().err
    assert not bad.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]


# -- KGE --------------------------------------------------------------------------------------------
KGE_TASK = {"name": "link-prediction", "dataset": "umls", "model": "complex", "training": "1-n", "loss": "ce"}
KGE_TRAIN = {"strategy": "single", "optimizer": "adagrad", "lr": 0.1, "schedule": "constant", "batch_size": 128}
KGE_TRAIN |= {"epochs": 25, "log_every": 1000, "tensorboard": False, "threads": 1}


def test_kge_int8_tables_and_a_distilled_small_student(data_dir: Path, tmp_path: Path, capsys) -> None:
    teacher = tmp_path / "teacher"
    run_training({"train": KGE_TRAIN, "task": KGE_TASK | {"dim": 128}}, teacher)
    q = tmp_path / "q"
    assert main(["compress", str(teacher), "-m", "int8", "-o", str(q)]) == 0
    r = record(q)
    assert r["ratios"]["weights"] <= 0.3 and r["ratios"]["metric_retained"] >= 0.99
    small = tmp_path / "small"
    args = ["compress", str(teacher), "-m", "distill", "--dim", "16", "--alpha", "0.9", "--temperature", "2"]
    assert main(args + ["-o", str(small)]) == 0
    r = record(small)
    assert r["ratios"]["parameters"] < 0.15 and r["compressed"]["metrics"]["mrr"] >= 0.75
    from kelm.kge.folder import load_kge

    assert load_kge(small)[1]["dim"] == 16
    capsys.readouterr()
    assert main(["compress", str(teacher), "-m", "share", "-o", str(tmp_path / "s")]) == 2
    assert "does not apply to a KGE model" in capsys.readouterr().err
    # a teacher of another graph is refused by name
    other = {"train": KGE_TRAIN | {"max_steps": 1}, "task": KGE_TASK | {"dataset": "nations", "teacher": str(teacher)}}
    with pytest.raises(Exception, match="other ids than this graph"):
        run_training(other, tmp_path / "other")


def test_text_kgc_teacher_into_a_frozen_text_student(data_dir: Path, tmp_path: Path) -> None:
    """A text-KGC run (a bi-encoder mixed with ComplEx, α chosen on valid) teaches a frozen-text
    student: its score rows are computed once per query and equal the teacher's own scoring, and
    the student trained on them ranks better than the same student trained on the data alone."""
    from kelm.kgc.teacher import load_score_teacher
    from kelm.kgc.text_kgc import load_text_kgc
    from kelm.tasks import build_task

    kge = tmp_path / "kge"
    run_training({"train": KGE_TRAIN, "task": KGE_TASK | {"dim": 128}}, kge)
    text = tmp_path / "text"
    tiny = {"model": "tiny-bert", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_length": 16}
    text_train = {"strategy": "single", "threads": 1, "batch_size": 64, "lr": 1e-3, "max_steps": 30}
    text_train |= {"log_every": 1000, "tensorboard": False}
    text_task = {"name": "text-kgc", "dataset": "umls", **tiny, "hybrid_kge": str(kge)}
    run_training({"train": text_train, "task": text_task}, text)
    teacher_mrr = json.loads((text / "metrics.json").read_text())["test"]["mrr"]

    student = {"name": "frozen-text-kgc", "dataset": "umls", "encoder": "minilm", "max_length": 64, "dim": 64}
    task = build_task(student)
    ids, rels = task.tensors.entity_ids, task.tensors.relation_ids
    teacher = load_score_teacher(text, ids, rels)
    R = len(rels)
    e, r = torch.tensor([0, 5, 0, 7]), torch.tensor([1, 2 + R, 1, 3])
    rows = teacher.scores(e, r, torch.ones(4, dtype=torch.long))
    assert len(teacher.rows) == 3 and torch.equal(rows[0], rows[2])  # one row per distinct query
    direct = load_text_kgc(text).scoring()
    assert torch.allclose(rows[1], direct.score_h(torch.tensor([2]), torch.tensor([5]))[0], atol=1e-5)
    assert torch.allclose(teacher.scores(e, r, torch.ones(4, dtype=torch.long)), rows)
    with pytest.raises(Exception, match="other ids than this graph"):
        load_score_teacher(text, ids[::-1], rels)

    train = {"strategy": "single", "optimizer": "adamw", "lr": 3e-3, "schedule": "constant", "batch_size": 256}
    train |= {"max_steps": 150, "eval_every": 10000, "log_every": 10000, "tensorboard": False, "threads": 1}
    mrr = {}
    for name, extra in (("alone", {}), ("distilled", {"teacher": str(text), "distill_weight": 0.9})):
        run_training({"train": train, "task": student | extra | {"distill_temperature": 2.0}}, tmp_path / name)
        mrr[name] = json.loads((tmp_path / name / "metrics.json").read_text())["test"]["mrr"]
    assert mrr["distilled"] > mrr["alone"] + 0.01, (mrr, teacher_mrr)
    assert mrr["distilled"] >= 0.95 * teacher_mrr
    # the same through `kelm compress`: a frozen-text run measured beside its text-KGC teacher
    out = tmp_path / "compressed"
    args = ["compress", str(text), "-m", "distill", "--dim", "64", "--alpha", "0.9", "--max-steps", "150"]
    assert main([*args, "-o", str(out)]) == 0
    r = record(out)
    assert r["original"]["metric"] == {"name": "mrr", "value": teacher_mrr, "split": "test"}
    assert r["compressed"]["metric"]["value"] == json.loads((out / "metrics.json").read_text())["test"]["mrr"]
    assert r["compressed"]["metric"]["value"] >= 0.95 * teacher_mrr
    assert {"batch_1", "batch_32"} <= set(r["compressed"]["latency"])
    assert main(["compress", str(text), "-m", "int8", "-o", str(tmp_path / "x")]) == 2
    from kelm.kgc.frozen_text import load_frozen_text

    scorer = load_frozen_text(out).model  # inference projects the entity features once
    with torch.no_grad():
        assert torch.allclose(scorer.entities(), scorer.proj(scorer.features))
    assert scorer.train().frozen_table is None


def own_tokenizer_student(folder: Path, texts: list[str]) -> Path:
    """A from-scratch BERT with a WordPiece vocabulary learnt from ``texts`` (not MiniLM's)."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(texts, vocab_size=1500, min_frequency=1)
    tok = BertTokenizerFast(tokenizer_object=wp._tokenizer, model_max_length=64)
    tok.add_special_tokens({"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"})
    tok.save_pretrained(folder)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    return folder


def test_distillation_across_tokenizers(teacher: Path, data_dir: Path, tmp_path: Path, capsys) -> None:
    """With alpha 1 the student never sees a gold label: it learns the teacher's outputs alone,
    through its own tokenization of the same verses."""
    from kelm.lm.hf import load_finetuned
    from kelm.tasks import build_task
    from kelm.tasks.classification import classify

    lines = (data_dir / "cls" / "poem-sentiment" / "train.tsv").read_text().splitlines()[1:]
    texts = [line.split("\t")[1] for line in lines]
    student = own_tokenizer_student(tmp_path / "scratch", texts)
    table = {"name": "distill", "teacher": str(teacher), "student": str(student), "alpha": 1.0, "temperature": 1.0}
    task = build_task(table)
    pair = task.collate([task.train_data()[i] for i in range(4)])
    assert pair["input_ids"].shape != pair["teacher_input_ids"].shape or not torch.equal(
        pair["input_ids"], pair["teacher_input_ids"]
    )  # the same verses, tokenized twice

    def agreement(folder: Path) -> float:
        from transformers import AutoTokenizer

        model, tok, _ = load_finetuned(folder) if (folder / "model").is_dir() else (None, None, None)
        if model is None:
            model = BertForSequenceClassification.from_pretrained(folder, num_labels=3, ignore_mismatched_sizes=True)
            model, tok = model.eval(), AutoTokenizer.from_pretrained(folder)
        ours = [label for label, _ in classify(model, tok, texts, 64)]
        return sum(str(a) == str(b) for a, b in zip(ours, theirs, strict=True)) / len(texts)

    t_model, t_tok, _ = load_finetuned(teacher)
    theirs = [label for label, _ in classify(t_model, t_tok, texts, 64)]
    before = agreement(student)
    out = tmp_path / "small"
    run_training({"train": TRAIN | {"lr": 1e-3, "epochs": 6}, "task": table}, out)
    after = agreement(out)
    assert after >= 0.75 and after >= before + 0.1, (before, after)
    capsys.readouterr()
    verses = tmp_path / "v.txt"
    verses.write_text("the sweet joy of a summer morning\n")
    assert main(["predict", "--model", str(out), str(verses)]) == 0
    assert capsys.readouterr().out.split("\t")[0] in ("-1", "0", "1")


def conll_subset(src: Path, dst: Path, n: int) -> Path:
    blocks = [b for b in src.read_text(encoding="utf-8").split("\n\n") if b.strip()]
    dst.write_text("\n\n".join(blocks[:n]) + "\n", encoding="utf-8")
    return dst


def test_ner_distillation_same_and_own_tokenizer(data_dir: Path, tmp_path: Path) -> None:
    """WNUT-17 (600 training sentences): a 3-layer student keeps 70% of the teacher's F1 or more, and a
    student with its own tokenizer pairs each word's first sub-word in both tokenizations."""
    from kelm.tasks import build_task

    src = data_dir / "ner" / "wnut17"
    files = {split: str(conll_subset(src / f"{split}.conll", tmp_path / f"{split}.conll", n))
             for split, n in (("train", 600), ("dev", 100), ("test", 200))}  # fmt: skip
    teacher = tmp_path / "teacher"
    run_training({"train": TRAIN, "task": {"name": "ner", "model": "minilm", "max_length": 64, **files}}, teacher)
    student = tmp_path / "student"
    assert main(["compress", str(teacher), "-m", "distill", "--hidden-weight", "1", "-o", str(student)]) == 0
    r = record(student)
    o, c = r["original"]["metrics"]["f1"], r["compressed"]["metrics"]["f1"]
    assert o > 0.15 and c >= 0.7 * o, (o, c)
    texts = [" ".join(line.split("\t")[0] for line in block.splitlines()) for block in
             Path(files["train"]).read_text().split("\n\n") if block.strip()]  # fmt: skip
    own = own_tokenizer_student(tmp_path / "scratch", texts)
    task = build_task({"name": "distill", "teacher": str(teacher), "student": str(own)})
    samples = [task.train_data()[i] for i in range(16)]
    batch = task.collate(samples)
    assert not torch.equal(batch["input_ids"][:, :5], batch["teacher_input_ids"][:, :5])
    words = sum(min(len(s["tags"]), len(t["tags"])) for s, t in samples)
    s_rows, t_rows = task._paired_logits(
        torch.randn(*batch["input_ids"].shape, 13), torch.randn(*batch["teacher_input_ids"].shape, 13),
        batch, {k[8:]: v for k, v in batch.items() if k.startswith("teacher_")},
    )  # fmt: skip
    assert len(s_rows) == len(t_rows) == words
