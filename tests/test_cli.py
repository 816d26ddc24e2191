"""The `kelm` command line end to end, on the real embedded store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kelm.cli import main
from kelm.kg.io import load_kg
from kelm.kg.tensors import TripleTensors

UMLS = {
    "entities": 135,
    "relations": 46,
    "triples": 6529,
    "splits": {"test": 661, "train": 5216, "valid": 652},
}


def kelm(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a subprocess."""
    return subprocess.run(
        [sys.executable, "-c", "from kelm.cli import run; run()", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def umls_store(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    store = tmp_path_factory.mktemp("cli") / "store"
    assert main(["kg", "import", "umls", "--store", str(store), "--data-dir", str(data_dir)]) == 0
    return store


@pytest.mark.parametrize(
    "args, says",
    [
        (["kg", "subgraph", "virus", "--fanout", "0"], ("--fanout",)),
        (["kg", "subgraph"], ("Missing argument",)),
        (["kg", "subgraph", "virus", "--bogus"], ("No such option", "--bogus")),  # click words it two ways
    ],
)
def test_usage_errors_are_one_message_not_a_traceback(args: list[str], says: tuple[str, ...]) -> None:
    res = kelm(*args)
    assert res.returncode == 2
    assert all(part in res.stderr for part in says)
    assert "Traceback" not in res.stderr + res.stdout


def test_version_and_help() -> None:
    res = kelm("--version")
    assert res.returncode == 0 and res.stdout.startswith("kelm ")
    for cmd in (
        ["--help"],
        ["kg", "--help"],
        ["kg", "import", "--help"],
        ["data", "--help"],
        ["demo", "--help"],
    ):
        res = kelm(*cmd)
        assert res.returncode == 0, res.stderr
        assert "Usage" in res.stdout


def test_import_and_stats_match_the_issue_example(umls_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["kg", "stats", "--store", str(umls_store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == UMLS


def test_import_into_non_empty_store_needs_a_choice(umls_store: Path, data_dir: Path) -> None:
    res = kelm("kg", "import", "umls", "--store", str(umls_store), "--data-dir", str(data_dir))
    assert res.returncode != 0
    assert "--replace" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_query_is_read_only(umls_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    q = "MATCH (e:Entity) WHERE e.id = $id RETURN e.id AS id, e.label AS label"
    assert main(["kg", "query", q, "--store", str(umls_store), "-p", 'id="virus"', "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"id": "virus", "label": "virus"}]
    res = kelm("kg", "query", "MATCH (e:Entity) DETACH DELETE e", "--store", str(umls_store))
    assert res.returncode != 0 and "read-only" in res.stderr and "Traceback" not in res.stderr


def test_subgraph_and_neighbors(umls_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["kg", "subgraph", "virus", "--hops", "1", "--store", str(umls_store), "--json"]) == 0
    sg = json.loads(capsys.readouterr().out)
    assert main(["kg", "neighbors", "virus", "--store", str(umls_store), "--json"]) == 0
    nbrs = json.loads(capsys.readouterr().out)
    one_hop = {n["head"] for n in nbrs} | {n["tail"] for n in nbrs}
    assert {e["id"] for e in sg["entities"]} == one_hop
    assert all(e["hop"] == (0 if e["id"] == "virus" else 1) for e in sg["entities"])
    res = kelm("kg", "subgraph", "no_such_entity", "--store", str(umls_store))
    assert res.returncode != 0 and "unknown entity" in res.stderr


def test_export_tsv_round_trip(umls_store: Path, data_dir: Path, tmp_path: Path) -> None:
    assert main(["kg", "export", "--store", str(umls_store), "--out", str(tmp_path), "--format", "tsv"]) == 0
    exported, _ = load_kg(tmp_path)
    original, _ = load_kg(data_dir / "kg" / "umls")
    for split in ("train", "valid", "test"):
        assert sorted(t.key() for t in exported.splits[split]) == sorted(t.key() for t in original.splits[split])
    assert {e.id: e.label for e in exported.entities.values()} == {e.id: e.label for e in original.entities.values()}


def test_export_tensors(umls_store: Path, tmp_path: Path) -> None:
    assert main(["kg", "export", "--store", str(umls_store), "--out", str(tmp_path), "--format", "tensors"]) == 0
    tt = TripleTensors.load(tmp_path)
    assert (tt.num_entities, tt.num_relations) == (135, 46)
    assert {s: t.shape[0] for s, t in tt.triples.items()} == UMLS["splits"]
    edge_index, edge_type = tt.edge_index("train")
    assert edge_index.shape == (2, 5216) and edge_type.shape == (5216,)
    assert int(edge_index.max()) < 135 and int(edge_type.max()) < 46


def test_bad_file_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tr\tb\nc\td\n")
    res = kelm("kg", "import", str(bad), "--store", str(tmp_path / "s"))
    assert res.returncode != 0
    assert f"{bad}:2" in res.stderr and "Traceback" not in res.stderr
    res = kelm("kg", "import", str(bad), "--store", str(tmp_path / "s"), "--skip-bad")
    assert res.returncode == 0, res.stderr
    assert "skipped 1" in res.stdout


def test_config_file_and_unknown_key(tmp_path: Path, umls_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "kelm.toml"
    cfg.write_text(f'[store]\nbackend = "ladybug"\npath = "{umls_store}"\n')
    capsys.readouterr()
    assert main(["kg", "stats", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["triples"] == 6529
    cfg.write_text('[store]\nbakend = "ladybug"\n')
    res = kelm("kg", "stats", "--config", str(cfg))
    assert res.returncode == 2 and "store.bakend: unknown key" in res.stderr
    res = kelm("kg", "stats", "--store", str(umls_store), "--backend", "sqlite")
    assert res.returncode == 2 and "store.backend" in res.stderr


def test_missing_store_is_one_line(tmp_path: Path) -> None:
    res = kelm("kg", "stats", "--store", str(tmp_path / "nothing"))
    assert res.returncode != 0 and "no store at" in res.stderr and "Traceback" not in res.stderr


def test_demo_runs_offline(tmp_path: Path) -> None:
    env_free = kelm("demo", "--out", str(tmp_path), "--quick", "--threads", "1")
    assert env_free.returncode == 0, env_free.stderr
    assert "135" in env_free.stdout and "6,529" in env_free.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["stats"] == UMLS
