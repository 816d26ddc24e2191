"""Serving throughput: kelm's dynamic batching against batch-size-1 serving and a naive endpoint.

    KELM_DATA_DIR=../shared/data python bench/serve_load.py --clients 16 --seconds 20 --json

One MiniLM-L6 sentence classifier (fine-tuned for a few steps here: speed does not depend on what
it learnt) is served three ways, each on loopback, one at a time:

- ``kelm``: `kelm.app.serve` with dynamic batching (``--max-wait-ms``, ``--max-batch-tokens``);
- ``kelm, batch 1``: the same server with batches of one request (``max_batch_tokens=1``);
- ``naive FastAPI``: a plain FastAPI route that runs the model once per request, in FastAPI's
  thread pool, as a first version of a model server usually does.

``--clients`` threads of a separate client process each send one sentence per request in a closed
loop for ``--seconds``; the run reports requests per second and latency percentiles. Server and
clients share the machine's cores. Before the servers, the forward pass alone is timed at batch
size 1 and at batch size ``--clients`` (the largest batch a closed loop of that many clients can
form): the ratio of the two bounds what batching can gain on this machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

WORDS = [
    "the",
    "a",
    "river",
    "hill",
    "sky",
    "night",
    "of",
    "and",
    "stone",
    "field",
    "under",
    "over",
    "bright",
    "dark",
    "glad",
    "grief",
    "cold",
    "joy",
    "tree",
    "day",
]


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(12, 24)))


def train_classifier(root: Path) -> Path:
    from kelm.app import run_training

    rng = random.Random(0)
    for split, n in (("train", 64), ("dev", 16)):
        rows = [f"{i}\t{sentence(rng)}\t{rng.choice(['pos', 'neg'])}" for i in range(n)]
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    task = {"name": "classification", "train": str(root / "train.tsv"), "dev": str(root / "dev.tsv")}
    task |= {"model": "minilm", "max_length": 64}
    train = {"strategy": "single", "max_steps": 4, "batch_size": 16, "tensorboard": False, "log_every": 100}
    run_training({"task": task, "train": train}, root / "classifier")
    return root / "classifier"


class NaiveBody(BaseModel):
    inputs: str


def naive_app(run: Path) -> Any:
    from fastapi import FastAPI

    from kelm.lm.hf import load_finetuned
    from kelm.tasks.classification import classify

    model, tokenizer, spec = load_finetuned(run)
    app = FastAPI()

    @app.post("/v1/classify")
    def route(body: NaiveBody) -> dict[str, Any]:
        with torch.no_grad():
            label, p = classify(model, tokenizer, [body.inputs], int(spec["max_length"]))[0]
        return {"results": [{"label": label, "probability": p}]}

    return app


def forward_ceiling(run: Path, batch_sizes: tuple[int, ...], seconds: float = 5.0) -> dict[str, float]:
    """Sentences per second of the forward pass alone (tokenize, encode, softmax), no server."""
    from kelm.lm.hf import load_finetuned
    from kelm.tasks.classification import classify

    model, tokenizer, spec = load_finetuned(run)
    rng = random.Random(1)
    texts = [sentence(rng) for _ in range(256)]
    out = {}
    with torch.inference_mode():
        for size in batch_sizes:
            classify(model, tokenizer, texts[:size], int(spec["max_length"]))  # warm-up
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                lo = done % (len(texts) - size)
                classify(model, tokenizer, texts[lo : lo + size], int(spec["max_length"]))
                done += size
            out[f"batch_{size}"] = done / (time.perf_counter() - start)
    return out


def load(port: int, token: str, clients: int, seconds: float) -> dict[str, Any]:
    """Closed-loop load: each client thread keeps one HTTP/1.1 connection open, as load generators do."""
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/classify", json.dumps({"inputs": sentence(rng)}), headers)  # warm-up
        conn.getresponse().read()
        barrier.wait()
        while time.monotonic() < stop:
            t = time.perf_counter()
            conn.request("POST", "/v1/classify", json.dumps({"inputs": sentence(rng)}), headers)
            resp = conn.getresponse()
            resp.read()
            dt = time.perf_counter() - t
            with lock:
                if resp.status == 200:
                    latencies.append(dt)
                else:
                    errors[0] += 1
        conn.close()

    barrier = threading.Barrier(clients + 1)
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(worker, k) for k in range(clients)]
        barrier.wait()
        start, stop = time.monotonic(), time.monotonic() + seconds
        for f in futures:
            f.result()
    elapsed = time.monotonic() - start
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "requests_per_second": len(latencies) / elapsed,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--max-wait-ms", type=float, default=5)
    ap.add_argument("--max-batch-tokens", type=int, default=16_384)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from serving import TOKEN, Server

    from kelm.app.serve import ServeSettings, create_app, load_service

    results = {}
    with tempfile.TemporaryDirectory() as root:
        run = train_classifier(Path(root))
        ceiling = forward_ceiling(run, (1, args.clients))
        variants = {
            "kelm": lambda: create_app(
                [load_service(run)], None, ServeSettings(TOKEN, args.max_batch_tokens, args.max_wait_ms)
            ),
            "kelm, batch 1": lambda: create_app([load_service(run)], None, ServeSettings(TOKEN, 1, 0)),
            "naive FastAPI": lambda: naive_app(run),
        }
        for name, make in variants.items():
            with Server(make()) as server, ProcessPoolExecutor(1, mp_context=get_context("spawn")) as clients:
                # the load generator runs in its own process, so its threads do not share the server's GIL
                results[name] = clients.submit(load, server.port, TOKEN, args.clients, args.seconds).result()
    base = results["kelm, batch 1"]["requests_per_second"]
    for r in results.values():
        r["speedup_vs_batch_1"] = r["requests_per_second"] / base
    ceiling["speedup"] = ceiling[f"batch_{args.clients}"] / ceiling["batch_1"]
    if args.json:
        report = {"clients": args.clients, "seconds": args.seconds, "forward_only": ceiling, "results": results}
        print(json.dumps(report, indent=1))
        return
    print(
        f"forward pass alone: {ceiling['batch_1']:.1f} sentences/s one at a time, "
        f"{ceiling[f'batch_{args.clients}']:.1f}/s in batches of {args.clients} ({ceiling['speedup']:.2f}x)"
    )
    for name, r in results.items():
        print(
            f"{name:16s} {r['requests_per_second']:7.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms"
            f"  {r['speedup_vs_batch_1']:.2f}x  errors {r['errors']}"
        )


if __name__ == "__main__":
    main()
