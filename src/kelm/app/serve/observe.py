"""The server's outermost layer: body limit, draining, in-flight count and request metrics.

A plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``, which runs every request
through an extra task and memory stream: under load that costs more than a batched forward pass
saves per request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Histogram

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class ObserveRequests:
    """Wraps the app: refuses oversized bodies (413) and new requests while draining (503)."""

    def __init__(self, app: Any, *, state: Any, max_body_bytes: int, requests: Counter, latency: Histogram) -> None:
        self.app, self.state, self.max_body_bytes = app, state, max_body_bytes
        self.requests, self.latency = requests, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await _reply(send, 413, {"detail": f"body larger than {self.max_body_bytes} bytes"})
            return
        if self.state.draining:
            await _reply(send, 503, {"detail": "the server is shutting down"}, [(b"retry-after", b"5")])
            return
        start = time.perf_counter()
        status = [500]

        async def send_and_record(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.state.in_flight -= 1
            path = getattr(scope.get("route"), "path", "unmatched")  # the router writes the matched route
            self.requests.labels(path, str(status[0])).inc()
            self.latency.labels(path).observe(time.perf_counter() - start)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def _reply(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})
