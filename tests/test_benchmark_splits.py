"""Benchmarks as published: unseen valid/test entities (keep or drop), duplicate lines, --skip-bad
on `kelm kge train`, and WN18RR / FB15k-237 from the shared data folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kelm.cli import main
from kelm.kg.io import load_kg
from kelm.kg.unseen import drop_unseen
from kelm.tasks.link_prediction import LinkPredictionConfig, LinkPredictionTask

TRAIN = "a\tr\tb\nb\tr\tc\nc\tr\ta\n"
VALID = "a\tr\tc\n"
TEST = "b\tr\ta\na\tr\tz\ny\ts\ta\n"  # the second names entity z, the third entity y and relation s
SCORES = {"a": 4.0, "b": 3.0, "c": 2.0, "z": 5.0, "y": 1.0}


def folder(root: Path, test: str = TEST, train: str = TRAIN) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text(train, encoding="utf-8")
    (root / "valid.txt").write_text(VALID, encoding="utf-8")
    (root / "test.txt").write_text(test, encoding="utf-8")
    return root


class FixedScores(nn.Module):
    """Every query scores entity ``e`` with ``SCORES[e]``, whatever the head, relation or tail."""

    def __init__(self, entity_ids: list[str]):
        super().__init__()
        self.register_buffer("row", torch.tensor([SCORES[e] for e in entity_ids]))

    def forward(self, op: str, a: torch.Tensor, b: torch.Tensor, cands: torch.Tensor | None = None) -> torch.Tensor:
        return self.row.expand(len(a), -1).clone()


def evaluate_test(task: LinkPredictionTask) -> dict[str, object]:
    batch = task.collate([task.test_data()[i] for i in range(len(task.test_data()))])
    metrics = task.evaluate(FixedScores(task.tensors.entity_ids), [batch])
    return {"test": metrics, **task.breakdown([task.eval_details()])}


def test_folder_read_keeps_or_rejects_unseen(tmp_path: Path) -> None:
    path = folder(tmp_path / "d")
    kg, report = load_kg(path, unseen="keep")
    assert report.unseen == {"test": 2}
    assert {"z", "y"} <= set(kg.entities) and "s" in kg.relations
    assert kg.split_sizes() == {"train": 3, "valid": 1, "test": 3}
    dropped = drop_unseen(kg, ["valid", "test"])
    assert dropped == {"valid": 0, "test": 2}
    assert sorted(kg.entities) == ["a", "b", "c"] and "s" not in kg.relations
    kg, report = load_kg(path, skip_bad=True)  # the old default: rejected, or skipped with skip_bad
    assert report.unseen == {} and report.skipped == {str(path / "test.txt"): 2}


def test_keep_ranks_every_triple_and_reports_without_unseen(tmp_path: Path) -> None:
    task = LinkPredictionTask(LinkPredictionConfig(dataset=str(folder(tmp_path / "d")), dim=4))
    assert task.tensors.entity_ids == ["a", "b", "c", "y", "z"]
    out = evaluate_test(task)
    # Filtered ranks against a, b, c, y, z scored 4, 3, 2, 1, 5 (known: the 3 train, 1 valid, 3 test triples):
    # (b r ?) answer a, c filtered, z above: 2      (? r a) answer b, c filtered, z and a above: 3
    # (a r ?) answer z, b and c filtered: 1         (? r z) answer a, z above: 2
    # (y s ?) answer a, z above: 2                  (? s a) answer y, z a b c above: 5
    ranks_all = [2, 1, 2, 3, 2, 5]  # tail queries of the three triples, then head queries
    mrr_all = sum(1 / r for r in ranks_all) / 6
    assert out["test"]["mrr"] == pytest.approx(mrr_all)
    assert out["all"]["mrr"] == pytest.approx(mrr_all)
    assert out["all"]["mr"] == pytest.approx(sum(ranks_all) / 6)
    assert out["all"]["hits@1"] == pytest.approx(1 / 6)
    assert out["all"]["triples"] == 3
    assert out["without_unseen"] == pytest.approx(  # ranks 2 and 3 of (b r a)
        {"mrr": (1 / 2 + 1 / 3) / 2, "mr": 2.5, "hits@1": 0.0, "hits@3": 1.0, "hits@10": 1.0, "triples": 1}
    )
    assert out["unseen"] == {
        "policy": "keep",
        "valid": {"triples": 1, "unseen": 0, "dropped": 0},
        "test": {"triples": 3, "unseen": 2, "dropped": 0},
        "skipped_lines": 0,
        "duplicates": 0,
    }


def test_drop_removes_unseen_triples_and_their_entities(tmp_path: Path) -> None:
    task = LinkPredictionTask(LinkPredictionConfig(dataset=str(folder(tmp_path / "d")), dim=4, unseen="drop"))
    assert task.tensors.entity_ids == ["a", "b", "c"] and task.tensors.num_relations == 1
    out = evaluate_test(task)
    # (b r ?) answer a, c filtered: 1; (? r a) answer b, c filtered, a above: 2
    expected = {"mrr": 0.75, "mr": 1.5, "hits@1": 0.5, "hits@3": 1.0, "hits@10": 1.0}
    assert out["test"] == pytest.approx(expected)
    assert out["all"] == pytest.approx(expected | {"triples": 1})
    assert out["without_unseen"] == pytest.approx(expected | {"triples": 1})
    assert out["unseen"]["policy"] == "drop"
    assert out["unseen"]["test"] == {"triples": 1, "unseen": 0, "dropped": 2}


def test_duplicate_lines_are_stored_once_within_a_split(tmp_path: Path) -> None:
    path = folder(tmp_path / "d", train=TRAIN + "a\tr\tb\n", test="b\tr\ta\nb\tr\ta\na\tr\tb\n")
    kg, report = load_kg(path)
    assert kg.split_sizes() == {"train": 3, "valid": 1, "test": 2}  # a r b stays in train and in test
    assert report.duplicates == {str(path / "train.txt"): 1, str(path / "test.txt"): 1}
    assert report.total_duplicates == 2
    single = tmp_path / "one.tsv"
    single.write_text("a\tr\tb\nb\tr\tc\na\tr\tb\n", encoding="utf-8")
    kg, report = load_kg(single)
    assert kg.split_sizes() == {"train": 2} and report.total_duplicates == 1


def test_kg_import_reports_duplicates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    single = tmp_path / "one.tsv"
    single.write_text("a\tr\tb\nb\tr\tc\na\tr\tb\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["kg", "import", str(single), "--store", str(tmp_path / "s"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["triples"], report["duplicates"], report["duplicates_by_file"]) == (2, 1, {"one.tsv": 1})
    assert main(["kg", "import", str(single), "--store", str(tmp_path / "s"), "--replace"]) == 0
    assert "duplicates: 1" in capsys.readouterr().out


def kelm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from kelm.cli import run; run()", *args], capture_output=True, text=True, timeout=300
    )


def test_kge_train_skip_bad(tmp_path: Path) -> None:
    path = folder(tmp_path / "d", test="b\tr\ta\nnot a triple\na\tr\tz\n")
    common = ["--dataset", str(path), "--dim", "4", "--max-steps", "2", "--batch-size", "2", "--strategy", "single"]
    res = kelm("kge", "train", *common, "--out", str(tmp_path / "fail"))
    assert res.returncode != 0
    assert "Traceback" not in res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines == [f"error: {path / 'test.txt'}:2: expected 3 columns, found 1"], res.stderr
    res = kelm("kge", "train", *common, "--skip-bad", "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    assert "1 bad lines skipped" in res.stderr and "without_unseen (1 triples)" in res.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["test_unseen"]["skipped_lines"] == 1
    assert metrics["test_unseen"]["test"] == {"triples": 2, "unseen": 1, "dropped": 0}
    assert metrics["test_all"]["triples"] == 2 and metrics["test_without_unseen"]["triples"] == 1
    res = kelm("kge", "train", *common, "--unseen", "sometimes", "--out", str(tmp_path / "bad"))
    assert res.returncode != 0 and "task.unseen" in res.stderr and "Traceback" not in res.stderr


# -- the real benchmarks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "entities", "relations", "unseen", "train_entities"),
    [
        ("wn18rr", 40943, 11, {"valid": 210, "test": 210}, 40559),
        ("fb15k-237", 14541, 237, {"valid": 9, "test": 28}, 14505),
    ],
)
def test_real_benchmarks_keep_every_entity(
    data_dir: Path, name: str, entities: int, relations: int, unseen: dict[str, int], train_entities: int
) -> None:
    path = data_dir / "kg" / name
    if not path.is_dir():
        pytest.skip(f"kg/{name} is not in the shared data folder")
    kg, report = load_kg(path, unseen="keep")
    assert (len(kg.entities), len(kg.relations)) == (entities, relations)
    assert report.unseen == unseen and report.total_duplicates == 0 and report.total_skipped == 0
    dropped = drop_unseen(kg, ["valid", "test"])
    assert dropped == unseen and len(kg.entities) == train_entities


def test_kelm_data_resolves_wn18rr(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (data_dir / "kg" / "wn18rr").is_dir():
        pytest.skip("kg/wn18rr is not in the shared data folder")
    capsys.readouterr()
    assert main(["data", "info", "wn18rr", "--data-dir", str(data_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (Path(info["path"]), info["source"]) == (data_dir / "kg" / "wn18rr", "data-dir")
    task = LinkPredictionTask(LinkPredictionConfig(dataset="wn18rr", data_dir=str(data_dir), dim=4))
    assert task.tensors.num_entities == 40943
    assert task.unseen_info["test"] == {"triples": 3134, "unseen": 210, "dropped": 0}
