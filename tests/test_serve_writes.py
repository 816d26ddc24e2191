"""Store writes through the server: refused unless it runs with ``--allow-writes``, and then equal to
`kelm extract` and `kelm kg delete --document` on the same documents; entity search, the linker
and the evidence routes see each write at once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import TOKEN, Server

from kelm.app.serve import ServeSettings, create_app, load_service
from kelm.cli import main
from kelm.kg.model import Entity, KnowledgeGraph, Triple
from kelm.kg.store import open_store

THRESHOLD = 0.2


def corpus(data_dir: Path, lo: int, hi: int) -> str:
    items = json.loads((data_dir / "re/conll04/train.json").read_text(encoding="utf-8"))[lo:hi]
    return "\n\n".join(" ".join(item["tokens"]) for item in items)


def seed_store(path: Path) -> None:
    kg = KnowledgeGraph("seed")
    kg.add_triples("train", [Triple("somewhere", "near", "elsewhere")])
    kg.entities["somewhere"] = Entity("somewhere", "Somewhere")
    with open_store(path) as gs:
        gs.import_graph(kg)


def state(path: Path) -> tuple:
    """Facts with provenance, entities and evidence, without times and document sources."""
    with open_store(path, read_only=True) as gs:
        kg = gs.export()
        evidence = sorted((e.document, e.fact(), e.sentence, e.head_start, e.tail_end, e.score) for e in gs.evidence())
        facts = sorted(
            (t.head, t.relation, t.tail, split, t.provenance and t.provenance.source)
            for split in kg.splits
            for t in kg.splits[split]
        )
        return facts, sorted(kg.entities), evidence


@pytest.fixture
def writable(conll04_run: tuple[Path, dict], tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    run, _ = conll04_run
    seed_store(tmp_path / "served")
    store = open_store(tmp_path / "served")
    app = create_app([load_service(run)], store, ServeSettings(TOKEN, allow_writes=True))
    with Server(app) as s:
        yield s, tmp_path / "served"
    store.close()


def test_writes_are_refused_without_allow_writes(conll04_run: tuple[Path, dict], tmp_path: Path) -> None:
    run, _ = conll04_run
    seed_store(tmp_path / "store")
    before = state(tmp_path / "store")
    store = open_store(tmp_path / "store", read_only=True)
    with Server(create_app([load_service(run)], store, ServeSettings(TOKEN))) as s:
        status, body, _ = s.call("POST", "/v1/documents", {"id": "d1", "text": "John Smith lives in Paris."})
        assert status == 403 and "--allow-writes" in body["detail"]
        assert s.call("DELETE", "/v1/documents/d1")[0] == 403
        assert s.call("POST", "/v1/documents", {"id": "d1", "text": "x"}, token=None)[0] == 401
        _, models, _ = s.call("GET", "/v1/models")
        assert models["store"]["writable"] is False
    store.close()
    assert state(tmp_path / "store") == before


def test_served_writes_equal_kelm_extract_and_delete(
    writable: tuple[Server, Path], conll04_run: tuple[Path, dict], data_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    server, served = writable
    run, _ = conll04_run
    docs = {"a.txt": corpus(data_dir, 0, 6), "b.txt": corpus(data_dir, 6, 12)}  # ids as `kelm extract` gives
    for doc_id, text in docs.items():
        status, body, _ = server.call("POST", "/v1/documents", {"id": doc_id, "text": text, "threshold": THRESHOLD})
        assert status == 200, body
        assert body["document"] == doc_id and body["documents_written"] == 1
    assert sum(1 for e in state(served)[2]) > 0, "the extractor found no relation: the test would prove nothing"
    # the same documents through the CLI, into a second copy of the seed store
    folder = tmp_path / "docs"
    folder.mkdir()
    for doc_id, text in docs.items():
        (folder / doc_id).write_text(text, encoding="utf-8")
    seed_store(tmp_path / "cli")
    args = ["--store", str(tmp_path / "cli")]
    assert main(["extract", str(folder), "-m", str(run), *args, "--threshold", str(THRESHOLD), "--json"]) == 0
    capsys.readouterr()
    assert state(served) == state(tmp_path / "cli")

    # what was written is searchable, drawn with its provenance, and has its sentence
    facts, _, evidence = state(served)
    doc, (h, r, t), sentence, *_ = evidence[0]
    _, found, _ = server.call("GET", f"/v1/entities?q={h.replace('_', ' ')}")
    assert found["entities"][0]["id"] == h
    _, sg, _ = server.call("POST", "/v1/subgraph", {"seeds": [h], "hops": 1})
    drawn = {(f["head"], f["relation"], f["tail"]): f["source"] for f in sg["facts"]}
    assert drawn[h, r, t] == "extracted"
    _, ev, _ = server.call("POST", "/v1/evidence", {"facts": [{"head": h, "relation": r, "tail": t}]})
    assert sentence in [e["sentence"] for e in ev["evidence"]]

    status, body, _ = server.call("DELETE", "/v1/documents/a.txt")
    assert status == 200 and body["documents_deleted"] == 1
    assert main(["kg", "delete", "--document", "a.txt", *args]) == 0
    assert state(served) == state(tmp_path / "cli")
    status, body, _ = server.call("DELETE", "/v1/documents/a.txt")
    assert status == 404 and "unknown document 'a.txt'" in body["detail"]
    left = {e[1][0] for e in state(served)[2]} | {"somewhere", "elsewhere"}
    gone = {e[1][0] for e in evidence if e[0] == "a.txt"} - left
    for entity in gone:  # entities only document a created are gone from search too
        _, found, _ = server.call("GET", f"/v1/entities?q={entity}")
        assert entity not in [e["id"] for e in found["entities"]]
