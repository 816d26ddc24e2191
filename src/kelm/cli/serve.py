"""`kelm serve`: run folders and a store behind an HTTP API, on loopback by default."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

from kelm.cli.options import BackendOpt, ConfigOpt, StoreOpt, UriOpt, resolve_config, store_from_config
from kelm.errors import ConfigError
from kelm.progress import console

TOKEN_ENV = "KELM_SERVE_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def read_token(token_file: Path | None) -> tuple[str, bool]:
    """The bearer token from ``--token-file``, else ``$KELM_SERVE_TOKEN``, else a new random one
    (and whether it was generated)."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ConfigError(f"--token-file {token_file}: {err.strerror or err}") from None
        if len(token) < 16:
            raise ConfigError(f"--token-file {token_file}: the token must be at least 16 characters")
        return token, False
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        if len(token) < 16:
            raise ConfigError(f"${TOKEN_ENV}: the token must be at least 16 characters")
        return token, False
    return secrets.token_urlsafe(24), True


def serve(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to serve (KGE, fine-tuned HF models, extractor).")],
    store: StoreOpt = None,
    backend: BackendOpt = None,
    uri: UriOpt = None,
    config: ConfigOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help=f"File holding the bearer token (else ${TOKEN_ENV}).")
    ] = None,
    max_batch_tokens: Annotated[int, typer.Option(help="Largest padded batch, in tokens.", min=1)] = 16_384,
    max_wait_ms: Annotated[float, typer.Option(help="Longest wait for a batch to fill, in ms.", min=0)] = 5.0,
    max_queue: Annotated[int, typer.Option(help="Requests waiting per model before 503.", min=1)] = 512,
    threads: Annotated[int | None, typer.Option(help="Torch threads (default: torch's choice).", min=1)] = None,
    allow_writes: Annotated[
        bool, typer.Option("--allow-writes", help="Let token holders write documents to the store (/v1/documents).")
    ] = False,
) -> None:
    """Serve models and the graph over HTTP, with a page to explore it at /.

    Routes: /v1/classify, /v1/ner, /v1/qa, /v1/embeddings, /v1/link-prediction, /v1/ask,
    /v1/extract, /v1/link, /v1/entities, /v1/subgraph, /v1/evidence, /v1/cypher (read-only);
    /v1/documents with --allow-writes; /health, /ready, /metrics; API docs at /docs."""
    import torch

    from kelm.app.serve import ServeSettings, create_app, load_service
    from kelm.app.serve.server import run_server
    from kelm.app.serve.services import model_names

    token, generated = read_token(token_file)
    if threads is not None:
        torch.set_num_threads(threads)
    cfg = resolve_config(config, store, backend, uri)
    if allow_writes and not cfg.store.path:
        raise ConfigError("--allow-writes needs a store (--store)")
    services = [load_service(run, name=name) for run, name in zip(runs, model_names(runs), strict=True)]
    gs = store_from_config(cfg, read_only=not allow_writes) if cfg.store.path else None
    if host not in LOOPBACK:
        console.print(f"[bold yellow]warning:[/] listening on {host}, not loopback: reachable from other machines")
    if generated:
        console.print(f"bearer token (pass --token-file or ${TOKEN_ENV} to choose one): {token}", highlight=False)
    settings = ServeSettings(token, max_batch_tokens, max_wait_ms, max_queue, allow_writes=allow_writes)
    try:
        app = create_app(services, gs, settings)
    except BaseException:
        if gs is not None:
            gs.close()
        raise
    for s in app.state.services:
        console.print(f"serving {s.name} ({s.kind}): {', '.join(s.capabilities)}", highlight=False)
    page = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    console.print(f"page: {page}#token={token}" if generated else f"page: {page} (give it the token)", highlight=False)
    try:
        run_server(app, host, port)
    finally:
        if gs is not None:
            gs.close()
