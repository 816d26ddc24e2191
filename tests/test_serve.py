"""`kelm serve` on a real uvicorn server on loopback: auth, every route against the offline answer,
dynamic batching, and bad input and overload as HTTP errors (never a 5xx)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from serving import TOKEN, Server, free_port, texts

from kelm.app.serve import ServeSettings, Service, create_app
from kelm.kg.store import open_store


def test_every_route_but_health_needs_the_token(server: Server) -> None:
    assert server.call("GET", "/health", token=None)[0] == 200
    status, body, headers = server.call("GET", "/v1/models", token=None)
    assert status == 401 and headers.get("www-authenticate") == "Bearer"
    assert server.call("GET", "/v1/models", token="wrong-token-0123456789")[0] == 403
    assert server.call("POST", "/v1/classify", {"inputs": "x"}, token=None)[0] == 401
    status, body, _ = server.call("GET", "/v1/models")
    assert status == 200 and {m["kind"] for m in body["models"]} == {"hf", "kge", "linker"}
    assert server.call("GET", "/ready")[0] == 200


def test_classify_answers_as_the_model_does_offline(server: Server, classifier_run: Path) -> None:
    from kelm.lm.hf import load_finetuned
    from kelm.tasks.classification import classify

    sample = [t for t, _ in texts(12, 7)]
    status, body, _ = server.call("POST", "/v1/classify", {"inputs": sample})
    assert status == 200
    model, tokenizer, spec = load_finetuned(classifier_run)
    want = classify(model, tokenizer, sample, int(spec["max_length"]))
    got = [(r["label"], r["probability"]) for r in body["results"]]
    assert [g[0] for g in got] == [w[0] for w in want]
    assert all(abs(g[1] - w[1]) < 1e-5 for g, w in zip(got, want, strict=True))
    status, one, _ = server.call("POST", "/v1/classify", {"inputs": sample[0]})
    assert status == 200 and one["results"][0]["label"] == want[0][0]


def test_concurrent_requests_share_forward_passes(server: Server) -> None:
    sample = [t for t, _ in texts(32, 3)]
    alone = [server.call("POST", "/v1/classify", {"inputs": t})[1]["results"][0]["label"] for t in sample[:8]]
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda t: server.call("POST", "/v1/classify", {"inputs": t}), sample))
    assert all(status == 200 for status, _, _ in replies)
    assert [r[1]["results"][0]["label"] for r in replies[:8]] == alone  # batching changes no answer
    _, metrics, _ = server.call("GET", "/metrics")
    counts = {
        float(line.split('le="')[1].split('"')[0]): float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("kelm_batch_size_bucket") and "classify" in line
    }
    assert counts[1.0] < counts[float("inf")], "every batch held one request"


def test_embeddings_follow_the_openai_format(server: Server) -> None:
    request = {"input": ["glad sky", "dark river"], "model": "classifier"}
    status, body, _ = server.call("POST", "/v1/embeddings", request)
    assert status == 200 and body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1]
    vec = body["data"][0]["embedding"]
    assert len(vec) == 32 and abs(sum(v * v for v in vec) - 1) < 1e-4
    assert body["usage"]["prompt_tokens"] > 0


def test_link_prediction_with_evidence_from_the_store(server: Server, kge_run: tuple[Path, Path]) -> None:
    _, store_path = kge_run
    with open_store(store_path, "ladybug", read_only=True) as gs:
        fact = next(iter(gs.iter_facts()))
        facts = {(f.head, f.relation, f.tail) for f in gs.iter_facts()}
    status, body, _ = server.call("POST", "/v1/link-prediction", {"head": fact.head, "relation": fact.relation, "k": 5})
    assert status == 200 and len(body["answers"]) == 5
    for a in body["answers"]:
        assert a["known"] == ((fact.head, fact.relation, a["id"]) in facts)
        for path in a["paths"]:  # every evidence path is made of stored facts, from the query to the answer
            assert all((s["head"], s["relation"], s["tail"]) in facts for s in path)
            ends = {path[0]["head"], path[0]["tail"]} & {fact.head}
            assert ends and a["id"] in {path[-1]["head"], path[-1]["tail"]}
    status, body, _ = server.call("POST", "/v1/link-prediction", {"head": fact.head + "x", "relation": fact.relation})
    assert status == 404 and fact.head in body["suggestions"]


def test_subgraph_and_read_only_cypher(server: Server) -> None:
    status, body, _ = server.call("POST", "/v1/cypher", {"query": "MATCH (e:Entity) RETURN e.id AS id LIMIT 3"})
    assert status == 200 and len(body["rows"]) == 3
    seed = body["rows"][0]["id"]
    status, sg, _ = server.call("POST", "/v1/subgraph", {"seeds": [seed], "hops": 1})
    assert status == 200 and sg["entities"][0]["id"] == seed and sg["facts"]
    status, body, _ = server.call("POST", "/v1/cypher", {"query": "MATCH (n) DETACH DELETE n"})
    assert status == 403 and "read-only" in body["detail"]
    assert server.call("POST", "/v1/subgraph", {"seeds": ["no-such-entity"]})[0] == 404


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"inputs": 5}, 422, "inputs"),
        ({"inputs": []}, 422, "inputs"),
        ({"text": "x"}, 422, "inputs"),
        ({"inputs": "x", "model": "nope"}, 404, None),
    ],
)
def test_bad_requests_name_the_field(server: Server, body: dict, status: int, field: str | None) -> None:
    got, reply, _ = server.call("POST", "/v1/classify", body)
    assert got == status, reply
    if field is not None:
        assert any(field in [str(x) for x in err["loc"]] for err in reply["detail"]), reply


def test_oversized_and_malformed_bodies(server: Server) -> None:
    assert server.call("POST", "/v1/classify", raw=b'{"inputs": "' + b"a" * 70_000 + b'"}')[0] == 413
    assert server.call("POST", "/v1/classify", raw=b'{"inputs": ')[0] == 422


class SlowService(Service):
    """A stand-in model that takes 0.2 s per batch, to fill the queue."""

    capabilities = ("classify",)

    def run(self, capability: str, items: list[Any]) -> list[Any]:
        time.sleep(0.2)
        return [("x", 1.0)] * len(items)


def test_a_full_queue_answers_503_with_retry_after() -> None:
    app = create_app([SlowService("slow", "test")], None, ServeSettings(TOKEN, max_batch_tokens=1, max_queue=2))
    with Server(app) as s, ThreadPoolExecutor(12) as pool:
        replies = list(pool.map(lambda _: s.call("POST", "/v1/classify", {"inputs": "x"}), range(12)))
    statuses = sorted(r[0] for r in replies)
    assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}
    assert all(int(r[2]["retry-after"]) >= 1 for r in replies if r[0] == 503)


def test_link_finds_store_entities_by_label(server: Server, kge_run: tuple[Path, Path]) -> None:
    _, store_path = kge_run
    with open_store(store_path, "ladybug", read_only=True) as gs:
        entity = next(e for e in gs.iter_entities() if e.label and " " in e.label)
    text = f"We studied {entity.label} last year."
    status, body, _ = server.call("POST", "/v1/link", {"text": text})
    assert status == 200
    assert any(m["entity"] == entity.id and m["text"].lower() == entity.label.lower() for m in body["mentions"])


def test_kelm_serve_drains_on_sigterm(classifier_run: Path, tmp_path: Path) -> None:
    """In-flight requests finish, new ones get 503, then the process exits cleanly."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    port = free_port()
    cmd = [sys.executable, "-m", "kelm.cli", "serve", str(classifier_run), "--port", str(port)]
    # each request waits 1.5 s for company: long enough to be in flight when the signal comes
    cmd += ["--token-file", str(token_file), "--max-wait-ms", "1500", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = Server.client(port)
        client.wait_until_up(proc)
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(client.call, "POST", "/v1/classify", {"inputs": "glad sky"})
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            status, body, headers = client.call("POST", "/v1/classify", {"inputs": "dark river"})
            assert status == 503 and headers["retry-after"] == "5"
            status, body, _ = in_flight.result(timeout=30)
            assert status == 200 and body["results"][0]["label"] in ("pos", "neg")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
