"""A screenshot of `kelm serve`'s page on the demo's run folders, for the README (docs/serve-page.png).

Runs `kelm demo` first when ``--demo`` has no results, starts `kelm serve` on every model it saved
and its store, asks the hybrid for ``(virus, causes, ?)`` in Debian's headless Chromium and picks
the first answer that is not a known fact, so the drawing shows the evidence paths of a prediction.

    python bench/page_screenshot.py --demo kelm-demo --out docs/serve-page.png
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"kelm serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("kelm serve did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=Path("kelm-demo"), help="`kelm demo --out` folder")
    ap.add_argument("--out", type=Path, default=Path("docs/serve-page.png"))
    ap.add_argument("--head", default="virus")
    ap.add_argument("--relation", default="causes")
    args = ap.parse_args()
    kelm = [sys.executable, "-m", "kelm.cli"]
    if not (args.demo / "metrics.json").is_file():
        subprocess.run([*kelm, "demo", "--out", str(args.demo)], check=True)
    from playwright.sync_api import sync_playwright

    runs = [args.demo / s / m for s in ("transductive", "inductive") for m in ("hybrid", "structure", "text")]
    port, token = free_port(), secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "token").write_text(token, encoding="utf-8")
        cmd = [*kelm, "serve", *map(str, runs), "--store", str(args.demo / "store"), "--port", str(port)]
        proc = subprocess.Popen([*cmd, "--token-file", str(Path(tmp) / "token")])
        try:
            wait_until_up(port, proc)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
                page = browser.new_page(viewport={"width": 1400, "height": 820}, device_scale_factor=1)
                page.goto(f"http://127.0.0.1:{port}/#token={token}")
                page.wait_for_selector("#predict-section:not([hidden])")
                page.select_option("#lp-model", "transductive/hybrid")
                page.fill("#lp-head", args.head)
                page.select_option("#lp-relation", args.relation)
                page.click("#predict-form button")
                page.wait_for_selector("#answers li")
                unknown = page.query_selector_all("#answers li:not(:has(.badge.known))")
                if unknown:
                    unknown[0].click()
                    page.wait_for_selector(f'#graph[data-answer="{unknown[0].get_attribute("data-id")}"]')
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out))
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
