"""The web page at ``/``: search the graph, draw an entity's neighbourhood, ask questions and rank
link predictions with their evidence paths highlighted, and read the source sentence of an
extracted fact. Plain HTML, CSS and JavaScript shipped in the package; nothing is fetched from
another origin (a Content-Security-Policy of ``'self'`` enforces it). The page holds no data: it
calls the token-protected API with the token the user gives it (``#token=…`` in the address,
which never reaches the server, or the form)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse

STATIC = Path(__file__).parent / "static"
FILES = {"index.html": "text/html", "page.js": "text/javascript", "page.css": "text/css"}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def mount_page(app: FastAPI) -> None:
    """Serve the page at ``/`` and its script and style under ``/page/``."""

    def send(name: str) -> FileResponse:
        return FileResponse(STATIC / name, media_type=FILES[name], headers=HEADERS)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return send("index.html")

    @app.get("/page/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        if name not in FILES:
            raise HTTPException(404, f"no such file: {name}")
        return send(name)


__all__ = ["mount_page"]
