"""LadybugDB specifics: crash safety of the embedded store when the importing process is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kelm.errors import StoreError
from kelm.kg.model import KnowledgeGraph, Triple
from kelm.kg.store import open_store

KILLED_IMPORT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from kelm.kg.model import GraphChunk, Triple
    from kelm.kg.store import open_store

    store, marker = sys.argv[1], Path(sys.argv[2])

    def chunks():
        for c in range(10_000):
            if c == 2:
                marker.write_text("writing")  # two chunks are already inside the open transaction
            yield GraphChunk(
                triples=[Triple(f"n{c}_{i}", "r", f"n{c}_{i + 1}") for i in range(2_000)], split="train"
            )
            time.sleep(0.05)

    with open_store(store) as gs:
        gs.import_chunks(chunks())
    """
)


def _small_graph() -> KnowledgeGraph:
    kg = KnowledgeGraph()
    kg.add_triples("train", [Triple("a", "r", "b"), Triple("b", "r", "c")])
    kg.add_triples("test", [Triple("a", "r", "c")])
    return kg


def test_killed_import_leaves_store_unchanged(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with open_store(store) as gs:
        gs.import_graph(_small_graph())
        before = gs.stats()
        triples_before = sorted((f.head, f.relation, f.tail, f.split) for f in gs.iter_facts())
    marker = tmp_path / "marker"
    script = tmp_path / "killed_import.py"
    script.write_text(KILLED_IMPORT)
    proc = subprocess.Popen([sys.executable, str(script), str(store), str(marker)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, "the import process ended before it could be killed"
            assert time.monotonic() < deadline, "the import never started writing"
            time.sleep(0.02)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with open_store(store) as gs:
        assert gs.stats() == before
        assert sorted((f.head, f.relation, f.tail, f.split) for f in gs.iter_facts()) == triples_before


def test_read_only_open_refuses_writes(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with open_store(store) as gs:
        gs.import_graph(_small_graph())
    with open_store(store, read_only=True) as gs:
        assert gs.stats().triples == 3
        with pytest.raises(StoreError, match="read-only"):
            gs.upsert_facts([Triple("x", "r", "y")])
