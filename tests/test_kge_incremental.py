"""Incremental KGE training on a grown graph, resumes whose data changed, and tables too big to fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kelm.cli import main
from kelm.kg.vocab import ENTITIES_FILE, RELATIONS_FILE, read_vocab
from kelm.kge.folder import load_kge

OLD = [f"m{i:02d}" for i in range(24)]
NEW = ["a0", "a1", "a2"]  # sort before every old id: a sorted numbering would move all old rows


def triples(entities: list[str], relations: list[str], n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        h, t = torch.randint(0, len(entities), (2,), generator=g).tolist()
        r = int(torch.randint(0, len(relations), (1,), generator=g))
        rows.append(f"{entities[h]}\t{relations[r]}\t{entities[t]}")
    return rows


def write_graph(root: Path, train: list[str]) -> Path:
    """Train on ``train`` (duplicates dropped); valid and test take 6 triples each that train lacks."""
    train = list(dict.fromkeys(train))
    held_out = [t for t in dict.fromkeys(triples(OLD, ["r0", "r1"], 60, seed=9)) if t not in set(train)]
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("valid", held_out[:6]), ("test", held_out[6:12])):
        (root / f"{name}.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def train(*args: str) -> int:
    common = ["--dim", "8", "--batch-size", "16", "--strategy", "single"]
    return main(["kge", "train", *args, *common])


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("incremental")
    base = triples(OLD, ["r0", "r1"], 120, seed=0) + [f"{e}\tr0\t{e}" for e in OLD]  # every old id in train
    data = write_graph(root / "base", base)
    assert train("--dataset", str(data), "--max-steps", "20", "--out", str(root / "run")) == 0
    return root / "run", base


def rows_by_id(run: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[str], list[str]]:
    model, _ = load_kge(run)
    entities = read_vocab(run / "model" / ENTITIES_FILE)[0]
    relations = read_vocab(run / "model" / RELATIONS_FILE)[0]
    table = model.kge.entity.weight.detach()
    return {e: table[i] for i, e in enumerate(entities)}, model.kge.relation.weight.detach(), entities, relations


def test_grown_graph_trains_new_ids_and_keeps_old_embeddings(base_run: tuple[Path, list[str]], tmp_path: Path) -> None:
    run, base = base_run
    grown = base + triples(OLD[:6] + NEW, ["r0", "r2"], 60, seed=1) + [f"{e}\tr2\t{e}" for e in NEW]
    data = write_graph(tmp_path / "grown", grown)
    for steps, out in (("1", "short"), ("25", "long")):
        assert (
            train("--resume", str(run), "--dataset", str(data), "--max-steps", steps, "--out", str(tmp_path / out)) == 0
        )
    old_rows, old_rel, old_entities, old_relations = rows_by_id(run)
    short_rows, _, _, _ = rows_by_id(tmp_path / "short")
    new_rows, new_rel, entities, relations = rows_by_id(tmp_path / "long")
    # old ids first, in their order; new ones appended
    assert entities == old_entities + NEW and relations == old_relations + ["r2"]
    for e in OLD:  # exactly as trained
        assert torch.equal(new_rows[e], old_rows[e]), e
    R_old, R_new = len(old_relations), len(relations)
    for r in range(R_old):  # forward rows, and the inverse rows that moved from R_old + r to R_new + r
        assert torch.equal(new_rel[r], old_rel[r]) and torch.equal(new_rel[R_new + r], old_rel[R_old + r])
    for e in NEW:  # the new entities did train
        assert not torch.equal(new_rows[e], short_rows[e]), e


def test_train_init_moves_old_embeddings_too(base_run: tuple[Path, list[str]], tmp_path: Path) -> None:
    run, base = base_run
    data = write_graph(tmp_path / "grown", base + [f"{e}\tr0\t{OLD[0]}" for e in NEW])
    config = tmp_path / "c.toml"
    saved = (run / "config.toml").read_text(encoding="utf-8")
    assert "train_init = false" in saved
    config.write_text(saved.replace("train_init = false", "train_init = true"), encoding="utf-8")
    args = ["--init-from", str(run), "--dataset", str(data), "--max-steps", "10", "--out", str(tmp_path / "x")]
    assert main(["kge", "train", str(config), *args, "--strategy", "single"]) == 0
    old_rows, new_rows = rows_by_id(run)[0], rows_by_id(tmp_path / "x")[0]
    assert any(not torch.equal(new_rows[e], old_rows[e]) for e in OLD)


def test_shrunk_graph_is_refused_in_one_line(
    base_run: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, base = base_run
    data = write_graph(tmp_path / "shrunk", [t for t in base if OLD[-1] not in t])
    assert train("--resume", str(run), "--dataset", str(data), "--max-steps", "2", "--out", str(tmp_path / "y")) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "entity vocabulary shrank" in err[0] and f"'{OLD[-1]}'" in err[0], err


def test_resume_refuses_data_changed_under_the_checkpoint(
    base_run: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run, base = base_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    data = Path(read_dataset(copy))
    original = (data / "train.txt").read_text(encoding="utf-8")
    try:
        (data / "train.txt").write_text(original + "a0\tr0\tm00\n", encoding="utf-8")
        assert train("--resume", str(copy), "--max-steps", "30", "--out", str(copy)) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "entity vocabulary grew from 24 to 25 ids" in err[0], err
        assert "--resume RUN --dataset DATA" in err[0]
    finally:
        (data / "train.txt").write_text(original, encoding="utf-8")


def read_dataset(run: Path) -> str:
    import tomllib

    return tomllib.loads((run / "config.toml").read_text(encoding="utf-8"))["task"]["dataset"]


def test_table_too_big_for_memory_is_refused_before_allocating(
    base_run: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = read_dataset(base_run[0])
    args = [
        "kge",
        "train",
        "--dataset",
        data,
        "--dim",
        str(2**34),
        "--strategy",
        "single",
        "--out",
        str(tmp_path / "z"),
    ]
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the embedding tables do not fit: 24 entities x dim 17179869184" in err[0], err
    assert "GiB is free" in err[0]
