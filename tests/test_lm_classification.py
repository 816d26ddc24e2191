"""Sequence classification: it learns, metrics are exact, batches group by length, bad input fails in one line."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from kelm.app import run_training
from kelm.cli import main
from kelm.errors import DataError
from kelm.lm import metrics as M
from kelm.tasks import build_task
from kelm.tasks.classification import ClassificationTask
from kelm.tasks.finetune import REPORT_FILE, TruncationWarning
from kelm.train.data import ShardedBatches

TINY = {"model": "tiny-bert", "hidden_size": 64, "num_layers": 2, "num_heads": 2, "max_length": 32}
TRAIN = {
    "threads": 2,
    "strategy": "single",
    "lr": 2e-3,
    "schedule": "linear",
    "warmup_steps": 5,
    "batch_size": 16,
    "log_every": 50,
    "tensorboard": False,
}
POS = ["glad", "bright", "joy", "sweet", "love"]
NEG = ["dark", "grief", "cold", "tears", "death"]
FILLER = [
    "the",
    "of",
    "and",
    "a",
    "in",
    "to",
    "with",
    "on",
    "at",
    "by",
    "from",
    "over",
    "under",
    "river",
    "hill",
    "sky",
    "night",
    "day",
    "tree",
    "stone",
    "field",
]


def synthetic(path: Path, n: int, seed: int, header: bool = False) -> Path:
    """``id<TAB>text<TAB>label``: the label is which word family the verse holds (plus filler words)."""
    rng = random.Random(seed)
    lines = ["id\ttext\tlabel"] if header else []
    for i in range(n):
        label = rng.choice(["pos", "neg"])
        words = rng.choices(FILLER, k=rng.randint(2, 12)) + [rng.choice(POS if label == "pos" else NEG)]
        rng.shuffle(words)
        lines.append(f"{i}\t{' '.join(words)}\t{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    return {
        "train": str(synthetic(tmp_path / "train.tsv", 320, 0, header=True)),
        "dev": str(synthetic(tmp_path / "dev.tsv", 64, 1)),
        "test": str(synthetic(tmp_path / "test.tsv", 64, 2)),
    }


def table(files: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"name": "classification", **TINY, **files, **extra}


def test_learns_a_separable_task_and_predicts(files: dict[str, str], tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    train = TRAIN | {"epochs": 6, "eval_every": 20, "early_stopping_patience": 10}
    summary = run_training({"task": table(files), "train": train}, out)
    assert summary["test"]["accuracy"] > 0.9, summary["test"]
    assert summary["test"]["macro_f1"] > 0.9
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["valid"]) == {"loss", "accuracy", "macro_f1"}
    assert set(metrics["test"]) == {"loss", "accuracy", "macro_f1"}
    report = (out / REPORT_FILE).read_text()
    assert "test set" in report and "neg" in report and "pos" in report
    assert (out / "model" / "config.json").is_file() and (out / "model" / "tokenizer.json").is_file()
    # the exported folder is a Hugging Face checkpoint too
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(str(out / "model"))
    assert hf.config.id2label == {0: "neg", 1: "pos"}

    probe = tmp_path / "in.txt"
    probe.write_text("the river with joy and glad sky\nthe stone in cold dark tears\n")
    capsys.readouterr()
    assert main(["predict", "--model", str(out), str(probe)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["pos", "neg"]


def test_cli_finetune_on_files(files: dict[str, str], tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(
        '[task]\nname = "classification"\nmodel = "tiny-bert"\nhidden_size = 32\nnum_layers = 1\nnum_heads = 2\n'
        '[train]\nstrategy = "single"\nthreads = 2\ntensorboard = false\nlr = 0.002\n'
    )
    args = ["finetune", str(cfg), "--train", files["train"], "--dev", files["dev"], "--test", files["test"]]
    assert main(args + ["--epochs", "1", "--batch-size", "32", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test " in text and "macro_f1" in text
    assert set(json.loads((out / "metrics.json").read_text())["test"]) == {"loss", "accuracy", "macro_f1"}


def test_unseen_label_names_file_and_line(files: dict[str, str], tmp_path: Path, capsys) -> None:
    dev = Path(files["dev"])
    dev.write_text(dev.read_text() + "999\tsome new verse\tmixed\n")
    with pytest.raises(DataError, match=rf"{dev.name}:65: label 'mixed' does not occur in training"):
        build_task(table(files))
    code = main(
        ["finetune", "--task", "classification", "--model", "tiny-bert", "--train", files["train"]]
        + ["--dev", files["dev"], "--out", str(tmp_path / "x")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and f"{dev}:65" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_malformed_line(tmp_path: Path) -> None:
    bad = tmp_path / "train.tsv"
    bad.write_text("0\tfine verse\tpos\n1\tno label here\n2\ta\tb\tc\td\n")
    with pytest.raises(DataError, match=r"train.tsv:3: expected 2 or 3"):
        build_task({"name": "classification", "model": "tiny-bert", "train": str(bad)})


def test_drop_labels_and_poem_sentiment(data_dir: Path) -> None:
    task = build_task({"name": "classification", "dataset": "poem-sentiment", "data_dir": str(data_dir)})
    assert isinstance(task, ClassificationTask)
    assert task.labels == ["-1", "0", "1", "2"]
    assert (len(task.train_data()), len(task.eval_data()), len(task.test_data())) == (892, 105, 104)
    dropped = build_task(
        {"name": "classification", "dataset": "poem-sentiment", "data_dir": str(data_dir), "drop_labels": ["2"]}
    )
    assert dropped.labels == ["-1", "0", "1"] and len(dropped.train_data()) == 843


def test_truncation_warns_once_with_a_count(files: dict[str, str], tmp_path: Path) -> None:
    long = tmp_path / "long.tsv"
    long.write_text("".join(f"{i}\t{' '.join(['word'] * (20 + i))}\t{'ab'[i % 2]}\n" for i in range(5)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = build_task({"name": "classification", "model": "tiny-bert", "train": str(long), "max_length": 16})
    trunc = [w for w in caught if issubclass(w.category, TruncationWarning)]
    assert len(trunc) == 1 and "5 of 5 in train" in str(trunc[0].message)
    assert all(len(s["input_ids"]) == 16 for s in task.train_data())
    assert task.train_data()[0]["input_ids"][-1] == task.tokenizer.sep_token_id


def test_metrics_are_exact_across_ranks(files: dict[str, str]) -> None:
    """Per-rank shares combined as the engine combines them give the macro-F1 of the whole set."""
    from sklearn.metrics import f1_score

    task = build_task(table(files))
    torch.manual_seed(0)
    model = task.build_model().eval()
    data = task.eval_data()
    halves = [[data[i] for i in range(0, 20)], [data[i] for i in range(20, len(data))]]
    total, weight = {}, 0
    for half in halves:
        batches = [task.collate(half[i : i + 8]) for i in range(0, len(half), 8)]
        n = sum(task.batch_weight(b) for b in batches)
        for k, v in task.evaluate(model, batches).items():
            total[k] = total.get(k, 0.0) + v * n
        weight += n
    combined = task.finalize_metrics({k: v / weight for k, v in total.items()})
    batch = task.collate(list(data))
    with torch.no_grad():
        pred = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits.argmax(-1)
    gold = batch["labels"]
    assert combined["accuracy"] == pytest.approx(float((pred == gold).float().mean()))
    assert combined["macro_f1"] == pytest.approx(f1_score(gold.tolist(), pred.tolist(), average="macro"))
    assert not any(k.startswith(M.STAT) for k in combined)


def test_length_grouping_is_deterministic_and_pads_little(files: dict[str, str]) -> None:
    task = build_task(table(files))
    data = task.train_data()
    lengths = data.group_lengths

    def padding(loader: ShardedBatches) -> tuple[list[list[int]], int]:
        batches, waste = [], 0
        for b in loader:
            batches.append(b["input_ids"][:, 0].tolist())
            waste += int((b["attention_mask"] == 0).sum())
        return batches, waste

    grouped, waste = padding(ShardedBatches(data, task.collate, 16, 0, 1, seed=3))
    again, _ = padding(ShardedBatches(data, task.collate, 16, 0, 1, seed=3))
    assert grouped == again
    plain = build_task(table(files, group_by_length=False)).train_data()
    assert not hasattr(plain, "group_lengths")
    _, plain_waste = padding(ShardedBatches(plain, task.collate, 16, 0, 1, seed=3))
    assert waste < plain_waste / 3, (waste, plain_waste)
    # each sample once per epoch, and two ranks together see exactly the one-rank batches
    loader = ShardedBatches(data, lambda s: {"idx": s}, 16, 0, 1, seed=3)
    order = loader._order(0)
    assert sorted(order.tolist()) == list(range(len(data)))
    batches = order[: len(data) // 16 * 16].view(-1, 16)
    spans = lengths[batches].max(1).values - lengths[batches].min(1).values
    assert float(spans.float().mean()) <= 2.0


def test_two_processes_through_torchrun(files: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    args = ["finetune", "--task", "classification", "--model", "tiny-bert", "--train", files["train"]]
    args += ["--dev", files["dev"], "--epochs", "1", "--batch-size", "32", "--nproc", "2", "--out", str(out)]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and set(metrics["valid"]) == {"loss", "accuracy", "macro_f1"}
    assert (out / REPORT_FILE).is_file() and (out / "model" / "config.json").is_file()
