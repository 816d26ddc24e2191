"""A real uvicorn server in a thread on a free loopback port, and a small JSON client for it."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import uvicorn

TOKEN = "test-token-0123456789"

WORDS = {"pos": ["glad", "bright", "joy"], "neg": ["dark", "grief", "cold"]}
FILLER = ["the", "river", "hill", "sky", "night", "of", "and", "stone"]


def texts(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        words = rng.choices(FILLER, k=rng.randint(2, 10)) + [rng.choice(WORDS[label])]
        rng.shuffle(words)
        out.append((" ".join(words), label))
    return out


def cue_word_task(root: Path, splits: dict[str, tuple[int, int]], **extra: Any) -> dict[str, Any]:
    """A tiny-BERT classification ``[task]`` over cue-word texts written to ``root/SPLIT.tsv``
    (``splits``: split → (number of texts, seed))."""
    for split, (n, seed) in splits.items():
        rows = [f"{i}\t{t}\t{lab}" for i, (t, lab) in enumerate(texts(n, seed))]
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    task = {"name": "classification", "model": "tiny-bert", "hidden_size": 32, "num_layers": 1, "num_heads": 2}
    return {**task, "max_length": 32, **{split: str(root / f"{split}.tsv") for split in splits}, **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A uvicorn server in a thread, stopped on exit."""

    def __init__(self, app: Any):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @classmethod
    def client(cls, port: int) -> Server:
        """A client of a server already listening on ``port`` (in another process)."""
        out = cls.__new__(cls)
        out.port = port
        return out

    def wait_until_up(self, proc: Any, seconds: float = 120) -> None:
        """Poll ``/health`` until the server in ``proc`` answers (failing if it exits first)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                if self.call("GET", "/health", token=None)[0] == 200:
                    return
            except OSError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else "the server exited"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = TOKEN, raw: bytes | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                payload = resp.read()
                status, headers = resp.status, dict(resp.headers)
        except urllib.error.HTTPError as err:
            payload, status, headers = err.read(), err.code, dict(err.headers)
        try:
            return status, json.loads(payload), headers
        except json.JSONDecodeError:
            return status, payload.decode(), headers
