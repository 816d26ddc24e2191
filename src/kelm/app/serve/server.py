"""Running the app under uvicorn with a graceful stop.

On the first SIGTERM or SIGINT the server drains: requests already in flight finish, new ones get
503 with ``Retry-After`` (and ``/health`` too, so a load balancer moves away); when none is left,
or after ``grace`` seconds, uvicorn shuts down. A second signal stops at once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI


class DrainingServer(uvicorn.Server):
    """`uvicorn.Server` that drains before it exits (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, grace: float = 30.0):
        super().__init__(config)
        self.app, self.grace = app, grace

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.app.state.draining:
            super().handle_exit(sig, frame)
            return
        self.app.state.draining = True
        threading.Thread(target=self._drain, daemon=True, name="kelm-drain").start()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.grace
        while self.app.state.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.should_exit = True


def run_server(app: FastAPI, host: str, port: int, grace: float = 30.0) -> None:
    """Serve ``app`` until a signal stops it (gracefully, see `DrainingServer`)."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(grace))
    DrainingServer(config, app, grace).run()
