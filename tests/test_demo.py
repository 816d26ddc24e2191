"""`kelm demo --quick` end to end: offline, real store, real MiniLM features, real training runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kelm.app.demo import MODELS, SETTINGS
from kelm.data import bundled_path
from kelm.kg.datasets import load_graph
from kelm.kg.tensors import TripleTensors
from kelm.kgc.frozen_text import load_frozen_text
from kelm.kgc.hybrid_fit import load_hybrid
from kelm.kgc.inductive import inductive_split
from kelm.kge.evaluation import FilteredRankEvaluator
from kelm.kge.mixing import load_structural
from kelm.kgqa.graph import QAGraph


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("demo") / "out"
    env = {**os.environ, "KELM_DATA_DIR": str(out / "no-data-here"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    res = kelm("demo", "--out", str(out), "--quick", "--threads", "1", env=env)
    assert res.returncode == 0, res.stderr
    return res, out


def kelm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a subprocess."""
    cmd = [sys.executable, "-c", "from kelm.cli import run; run()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def rows_by(metrics: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["setting"], r["model"]): r for r in metrics["rows"]}


def test_table_and_metrics(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    res, out = demo
    for word in ("transductive", "inductive", "structure", "text", "hybrid", "MRR", "Hits@10", "evidence:"):
        assert word in res.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    rows = rows_by(metrics)
    assert sorted(rows) == sorted((s, m) for s in SETTINGS for m in MODELS)
    for row in rows.values():
        assert set(row) == {"model", "setting", "mrr", "hits_at_1", "hits_at_10", "seconds", "path"}
        assert 0 < row["hits_at_1"] <= row["mrr"] <= row["hits_at_10"] <= 1 and row["seconds"] > 0
        assert Path(row["path"]).is_dir()
    assert metrics["inductive"]["unseen_entities"] == 27
    # transductive UMLS is saturated for structure; mixing in text does not lose it
    assert rows["transductive", "structure"]["mrr"] > 0.85
    assert rows["transductive", "hybrid"]["mrr"] >= rows["transductive", "structure"]["mrr"] - 0.02
    # inductive: structure-only cannot rank unseen entities; the text-reading models can
    struct = rows["inductive", "structure"]["mrr"]
    assert struct < 0.1
    assert rows["inductive", "text"]["mrr"] > struct + 0.3
    assert rows["inductive", "hybrid"]["mrr"] > struct + 0.3


def test_saved_models_reload_and_reproduce(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = demo
    metrics = json.loads((out / "metrics.json").read_text())
    rows = rows_by(metrics)
    kg = load_graph(str(bundled_path("umls")))
    split = inductive_split(kg, metrics["inductive"]["fraction"], metrics["inductive"]["seed"])
    tensors = TripleTensors.from_graph(split.kg)
    evaluator = FilteredRankEvaluator(torch.cat(list(tensors.triples.values())), tensors.num_entities)
    test = tensors.triples["test"]
    hybrid, text = load_hybrid(out / "inductive" / "hybrid")
    assert hybrid.alpha == metrics["alpha"]["inductive"]
    assert sorted(text.spec["unseen"]) == sorted(split.unseen)
    struct = load_structural(out / "inductive" / "structure", text.entity_ids, text.relation_ids)
    with torch.no_grad():
        for name, scoring in (("hybrid", hybrid), ("text", load_frozen_text(out / "inductive" / "text").scoring())):
            mrr = float(evaluator.rank(scoring, test).metrics()["mrr"])
            assert mrr == pytest.approx(rows["inductive", name]["mrr"], abs=1e-4)
        assert float(evaluator.rank(struct, test).metrics()["mrr"]) == pytest.approx(
            rows["inductive", "structure"]["mrr"], abs=1e-4
        )


def test_queries_with_evidence(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = demo
    metrics = json.loads((out / "metrics.json").read_text())
    queries = metrics["queries"]
    assert len(queries) == 3 and all(len(q["answers"]) == 3 for q in queries)
    # answers are predictions: no training fact of the query's setting among them
    assert all(a["split"] in (None, "valid", "test", "removed") for q in queries for a in q["answers"])
    assert queries[0]["query"] == "(virus, causes, ?)"
    unseen = [q for q in queries if q["unseen"]]
    assert len(unseen) == 1 and unseen[0]["setting"] == "inductive"
    graph = QAGraph.from_store(metrics["store"])
    paths = [p for q in queries for a in q["answers"] for p in a["paths"]]
    assert paths, "no evidence path at all"
    facts = {(graph.names[h], graph.rel_names[r], graph.names[t]) for h, r, t in graph.triples}
    for path in paths:
        assert 1 <= len(path) <= 2 and all(tuple(step) in facts for step in path)


def test_bad_threads_is_one_line() -> None:
    res = kelm("demo", "--threads", "0")
    assert res.returncode != 0 and "--threads" in res.stderr and "Traceback" not in res.stderr


def test_kelm_serve_serves_the_demo_run_folders(
    demo: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    """Every model the demo saves behind `kelm serve`, named by setting, ranking as it does offline."""
    from serving import TOKEN, Server, free_port

    _, out = demo
    folders = [out / setting / model for setting in SETTINGS for model in MODELS]
    (tmp_path / "token").write_text(TOKEN, encoding="utf-8")
    port = free_port()
    cmd = [sys.executable, "-m", "kelm.cli", "serve", *map(str, folders), "--store", str(out / "store")]
    cmd += ["--port", str(port), "--token-file", str(tmp_path / "token"), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = Server.client(port)
        client.wait_until_up(proc)
        _, models, _ = client.call("GET", "/v1/models")
        served = {m["name"]: m["kind"] for m in models["models"]}
        kinds = {"structure": "kge", "text": "frozen-text-kgc", "hybrid": "hybrid"}
        assert served == {f"{s}/{m}": kinds[m] for s in SETTINGS for m in MODELS} | {"store-linker": "linker"}
        hybrid, text = load_hybrid(out / "transductive" / "hybrid")
        h, r = text.entity_ids.index("virus"), text.relation_ids.index("causes")
        with torch.no_grad():
            want = [text.entity_ids[i] for i in hybrid.score_t(torch.tensor([h]), torch.tensor([r]))[0].topk(5)[1]]
        query = {"model": "transductive/hybrid", "head": "virus", "relation": "causes", "k": 5}
        status, body, _ = client.call("POST", "/v1/link-prediction", query)
        assert status == 200 and [a["id"] for a in body["answers"]] == want
        assert all(a["paths"] for a in body["answers"] if a["known"])  # a known fact is its own evidence
        status, page, headers = client.call("GET", "/", token=None)
        assert status == 200 and '<svg id="graph"' in page
        assert "script-src 'self'" in headers["content-security-policy"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
