"""A federated run as separate processes on loopback or a network, through Flower's deployment
runtime: the server starts a SuperLink and submits kelm's Flower app to it; each client is a
SuperNode that holds one part of the data. Flower 1.42's SuperLink serves its Fleet, Control
and runtime APIs over HTTP on one port.

``server_app`` and ``client_app`` are the components the submitted app names; the job travels in
the app's run config (the whole kelm config as JSON text and the server's output folder), so a
client needs no config file, only its data.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tomli_w
from flwr.app import Context

from kelm.app.federate.apps import make_client_app, make_server_app
from kelm.app.federate.local import FederatedJob
from kelm.app.federate.server import STATE_FILE
from kelm.app.run import RunConfig, load_run_config
from kelm.errors import ConfigError, KelmError

APP_NAME = "kelm-federated"


def job_from_context(context: Context) -> FederatedJob:
    """The job a submitted run carries in its run config; a client works in its node's ``work-dir``."""
    run = load_run_config(json.loads(str(context.run_config["kelm-config"])))
    out = Path(str(context.run_config["out"]))
    node = context.node_config
    parts = int(node.get("num-partitions", run.config.federate.clients))
    if parts != run.config.federate.clients:
        raise ConfigError(
            f"this client holds a part of {parts}, but the run splits the data over {run.config.federate.clients}"
        )
    work = node.get("work-dir")
    return FederatedJob(run, run.config.federate, out, client_root=Path(str(work)) if work else None)


server_app = make_server_app(job_from_context)
client_app = make_client_app(job_from_context)


# -- processes ------------------------------------------------------------------------------------
def flower_env(home: Path | None = None) -> dict[str, str]:
    """The environment of Flower's processes: this interpreter's scripts first on PATH (Flower
    starts ``flwr-serverapp`` and ``flwr-clientapp`` by name) and, for the server, its own FLWR_HOME."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    if home is not None:
        env["FLWR_HOME"] = str(home)
    return env


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address: expected HOST:PORT, not '{address}'")
    return host, int(port)


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise KelmError(
                f"the Flower SuperLink exited with code {proc.returncode} before listening on {host}:{port}"
            )
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise KelmError(f"nothing listens on {host}:{port} after {timeout:g} s")


def write_app(folder: Path, run: RunConfig, out_dir: Path) -> Path:
    """The Flower app the server submits: kelm's components and the job as its run config."""
    app = folder / "app"
    app.mkdir(parents=True, exist_ok=True)
    config = {**run.as_dict(), "federate": run.config.federate.model_dump()}
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": APP_NAME,
            "version": "1.0.0",
            "description": "kelm federated run",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "kelm",
                    "components": {
                        "serverapp": "kelm.app.federate.deploy:server_app",
                        "clientapp": "kelm.app.federate.deploy:client_app",
                    },
                    "config": {"kelm-config": json.dumps(config), "out": str(out_dir.resolve())},
                }
            }
        },
    }
    (app / "pyproject.toml").write_text(tomli_w.dumps(project), encoding="utf-8")
    return app


#: Lines of the server's log shown on the console (all of it is in ``flower/run.log``).
SHOWN = ("round ", "resuming ", '{"time"')


def stream_run(cmd: list[str], env: dict[str, str], log_path: Path, verbose: bool) -> str:
    """Run ``flwr run --stream``: its whole log to ``log_path``, kelm's round lines (or, verbose,
    everything) to the console; returns the log's last lines."""
    from kelm.progress import console

    last: list[str] = []
    with (
        log_path.open("a", encoding="utf-8") as log,
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            last = [*last[-40:], line]
            plain = line.rstrip("\n")
            if verbose or plain.lstrip().startswith(SHOWN):
                console.print(plain, highlight=False, markup=False)
    return "".join(last)


def serve_federation(run: RunConfig, out_dir: str | Path, address: str, verbose: bool = False) -> dict[str, Any]:
    """Start a SuperLink on ``address``, submit the run, stream its log until it ends, stop the
    SuperLink; returns the run's ``metrics.json`` (a run killed and started again resumes from
    its last finished round)."""
    out = Path(out_dir)
    host, port = parse_address(address)
    home = out / "flower"
    if home.exists():
        shutil.rmtree(home / "apps", ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    if not (out / STATE_FILE).is_file():  # a new run: no clients remembered from an earlier one
        (home / "superlink.db").unlink(missing_ok=True)
    connection = {"superlink": {"default": "kelm", "kelm": {"address": f"{host}:{port}", "insecure": True}}}
    (home / "config.toml").write_text(tomli_w.dumps(connection), encoding="utf-8")
    app = write_app(home, run, out)
    (out / "metrics.json").unlink(missing_ok=True)
    env = flower_env(home)
    log = (home / "superlink.log").open("ab")
    superlink = subprocess.Popen(
        [
            "flower-superlink",
            "--insecure",
            "--host",
            host,
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
            # its state on disk: a restarted server still knows the clients that joined before
            "--database",
            str(home / "superlink.db"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(host, port, 60, superlink)
        tail = stream_run(["flwr", "run", str(app), "kelm", "--stream"], env, home / "run.log", verbose)
        summary_path = out / "metrics.json"
        if not summary_path.is_file():
            raise KelmError(f"the federated run ended without {summary_path}; Flower's log ends:\n{tail}")
        return json.loads(summary_path.read_text(encoding="utf-8"))
    finally:
        superlink.terminate()
        try:
            superlink.wait(10)
        except subprocess.TimeoutExpired:
            superlink.kill()
        log.close()


def run_client(server: str, part: str, work_dir: str | Path | None = None) -> None:
    """Become a SuperNode holding data part ``part`` (``I/N``) until it is stopped (this process
    is replaced, so stopping it stops the node)."""
    index, sep, total = part.partition("/")
    if not sep or not index.isdigit() or not total.isdigit() or not 0 <= int(index) < int(total):
        raise ConfigError(f"--data: expected I/N with 0 <= I < N (this client's part of N), not '{part}'")
    parse_address(server)
    node = f"partition-id={int(index)} num-partitions={int(total)}"
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        node += f' work-dir="{Path(work_dir).resolve()}"'
    with socket.socket() as s:  # the SuperNode's own API for its ClientApp processes
        s.bind(("127.0.0.1", 0))
        own_port = s.getsockname()[1]
    cmd = ["flower-supernode", "--insecure", "--superlink", server, "--node-config", node, "--port", str(own_port)]
    sys.stdout.flush()
    os.execvpe(cmd[0], cmd, flower_env())
