"""The HTTP API: one typed route per capability, over the loaded services and the store.

Every route but ``/health`` needs ``Authorization: Bearer <token>`` (compared in constant time:
401 without it, 403 with a wrong one). Bodies over ``max_body_bytes`` get 413, a full model queue
503 with ``Retry-After``, a malformed body 422 naming the field, an unknown entity or relation 404
with the nearest names. Prometheus metrics are at ``/metrics``, OpenAPI docs at ``/docs``.
"""

from __future__ import annotations

import asyncio
import hmac
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field, field_validator

from kelm import __version__
from kelm.app.serve.batching import DynamicBatcher, Overloaded
from kelm.app.serve.observe import ObserveRequests
from kelm.app.serve.page import mount_page
from kelm.app.serve.services import Service, UnknownName
from kelm.app.serve.store_view import StoreView
from kelm.errors import ConfigError, KelmError, ReadOnlyQueryError, StoreError
from kelm.kg.store import GraphStore

MAX_INPUTS = 256
MAX_TEXT = 100_000


@dataclass
class ServeSettings:
    """Limits and the token; see `kelm serve --help`."""

    token: str
    max_batch_tokens: int = 16_384
    max_wait_ms: float = 5.0
    max_queue: int = 512
    max_body_bytes: int = 1 << 20
    allow_writes: bool = False


# -- request and response bodies ----------------------------------------------------------------
Texts = str | list[str]


class _Body(BaseModel):
    model_config = {"extra": "forbid"}


class TextsRequest(_Body):
    model: str | None = Field(None, description="Name of a loaded model (optional when one fits).")
    inputs: Texts = Field(..., description="A text or a list of texts.")

    @field_validator("inputs")
    @classmethod
    def _bounded(cls, v: Texts) -> Texts:
        texts = [v] if isinstance(v, str) else v
        if not texts or len(texts) > MAX_INPUTS:
            raise ValueError(f"give 1 to {MAX_INPUTS} texts")
        if any(len(t) > MAX_TEXT for t in texts):
            raise ValueError(f"a text is longer than {MAX_TEXT} characters")
        return v


class QARequest(_Body):
    model: str | None = None
    question: str = Field(..., min_length=1, max_length=MAX_TEXT)
    context: str = Field(..., min_length=1, max_length=MAX_TEXT)


class EmbeddingsRequest(_Body):
    """OpenAI-compatible: ``input`` and ``model``."""

    model: str | None = None
    input: Texts
    encoding_format: Literal["float"] = "float"
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _bounded(cls, v: Texts) -> Texts:
        return TextsRequest._bounded(v)


class LinkPredictionRequest(_Body):
    model: str | None = None
    head: str | None = Field(None, description="Rank tails of (head, relation, ?).")
    tail: str | None = Field(None, description="Rank heads of (?, relation, tail).")
    relation: str = Field(..., min_length=1)
    k: int = Field(10, ge=1, le=1000)


class AskRequest(_Body):
    model: str | None = None
    question: str = Field(..., min_length=1, max_length=MAX_TEXT, description="With the topic in [brackets].")
    top: int = Field(10, ge=1, le=100)
    paths: int = Field(3, ge=0, le=20)


class TextRequest(_Body):
    model: str | None = None
    text: str = Field(..., min_length=1, max_length=MAX_TEXT)


class ExtractRequest(TextRequest):
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="Keep relations scoring at least this.")


class SubgraphRequest(_Body):
    seeds: list[str] = Field(..., min_length=1, max_length=100)
    hops: int = Field(1, ge=0, le=3)
    max_entities: int = Field(200, ge=1, le=5000)


class FactRef(_Body):
    head: str = Field(..., min_length=1)
    relation: str = Field(..., min_length=1)
    tail: str = Field(..., min_length=1)


class EvidenceRequest(_Body):
    facts: list[FactRef] = Field(..., min_length=1, max_length=100)


class DocumentRequest(_Body):
    id: str = Field(..., min_length=1, max_length=500, description="The document's id (replaced if it exists).")
    text: str = Field(..., min_length=1, max_length=MAX_TEXT)
    model: str | None = Field(None, description="The extractor (optional when one is loaded).")
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="Keep relations scoring at least this.")


class CypherRequest(_Body):
    query: str = Field(..., min_length=1, max_length=MAX_TEXT)
    params: dict[str, Any] = Field(default_factory=dict)


# -- the app ------------------------------------------------------------------------------------
class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kelm_requests", "HTTP requests by route and status.", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "kelm_request_seconds",
            "Request latency by route.",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.batch = Histogram(
            "kelm_batch_size",
            "Requests per forward pass, by model and capability.",
            ["model", "capability"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.queue = Gauge(
            "kelm_queue_depth", "Requests waiting, by model and capability.", ["model", "capability"],
            registry=self.registry,
        )  # fmt: skip


def create_app(services: list[Service], store: GraphStore | None, settings: ServeSettings) -> FastAPI:
    """The API over ``services`` (and ``store``, read-only, when given)."""
    metrics = _Metrics()
    batchers: dict[tuple[str, str], DynamicBatcher] = {}
    services = list(services)
    view = StoreView(store, services) if store is not None else None  # adds the store's linker
    by_name = {s.name: s for s in services}
    if len(by_name) != len(services):
        raise ConfigError(f"two models have the same name: {', '.join(sorted(s.name for s in services))}")

    def batcher(service: Service, capability: str) -> DynamicBatcher:
        key = (service.name, capability)
        if key not in batchers:

            def on_batch(size: int, depth: int, key: tuple[str, str] = key) -> None:
                metrics.batch.labels(*key).observe(size)
                metrics.queue.labels(*key).set(depth)

            batchers[key] = DynamicBatcher(
                f"{service.name}/{capability}",
                lambda items, s=service, c=capability: s.run(c, items),
                max_batch_tokens=settings.max_batch_tokens,
                max_wait_ms=settings.max_wait_ms,
                max_queue=settings.max_queue,
                on_batch=on_batch,
            )
        return batchers[key]

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        app.state.ready = True
        yield
        app.state.ready = False
        for b in batchers.values():
            await b.close()

    app = FastAPI(
        title="kelm",
        version=__version__,
        description="Trained kelm models and the knowledge graph over HTTP.",
        lifespan=lifespan,
    )
    app.state.ready = False
    app.state.services = services
    app.state.draining = False  # set by `kelm.app.serve.server.DrainingServer` on SIGTERM
    app.state.in_flight = 0
    bearer = HTTPBearer(auto_error=False)

    def authorized(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if creds is None or creds.scheme.lower() != "bearer":
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(creds.credentials.encode(), settings.token.encode()):
            raise HTTPException(403, "wrong token")

    auth = [Depends(authorized)]

    def pick(name: str | None, capability: str) -> Service:
        if name is not None:
            if name not in by_name:
                raise UnknownName("model", name, [s.name for s in services])
            service = by_name[name]
            if capability not in service.capabilities:
                can = ", ".join(service.capabilities)
                raise HTTPException(400, f"model '{name}' cannot {capability} (it can: {can})")
            return service
        fits = [s for s in services if capability in s.capabilities]
        if len(fits) == 1:
            return fits[0]
        if not fits:
            raise HTTPException(404, f"no loaded model can {capability}")
        raise HTTPException(400, f"several models can {capability}: name one ({', '.join(s.name for s in fits)})")

    async def run(service: Service, capability: str, items: list[Any]) -> list[Any]:
        b = batcher(service, capability)
        return list(await asyncio.gather(*(b.submit(it, service.tokens(capability, it)) for it in items)))

    def the_store() -> StoreView:
        if view is None:
            raise HTTPException(404, "no store loaded (start the server with --store)")
        return view

    def writable() -> StoreView:
        if not settings.allow_writes:
            raise HTTPException(403, "this server is read-only: start it with --allow-writes to change the store")
        return the_store()

    # -- middleware and errors --------------------------------------------------------------------
    app.add_middleware(
        ObserveRequests,
        state=app.state,
        max_body_bytes=settings.max_body_bytes,
        requests=metrics.requests,
        latency=metrics.latency,
    )

    @app.exception_handler(UnknownName)
    async def unknown(_: Request, err: UnknownName) -> JSONResponse:
        return JSONResponse({"detail": str(err), "suggestions": err.suggestions}, status_code=404)

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, err: Overloaded) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": str(int(err.retry_after))})

    @app.exception_handler(ReadOnlyQueryError)
    async def read_only(_: Request, err: ReadOnlyQueryError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=403)

    @app.exception_handler(KelmError)
    async def kelm_error(_: Request, err: KelmError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=400)

    # -- routes -----------------------------------------------------------------------------------
    @app.get("/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness: the process answers (no token needed)."""
        return {"status": "ok"}

    @app.get("/ready", tags=["service"], dependencies=auth)
    def ready() -> JSONResponse:
        """Readiness: every model is loaded and the server takes requests."""
        ok = bool(app.state.ready)
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["service"], dependencies=auth)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["service"], dependencies=auth)
    def models() -> dict[str, Any]:
        """The loaded models and what each can do."""
        return {
            "models": [
                {"name": s.name, "kind": s.kind, "capabilities": list(s.capabilities), **s.describe()} for s in services
            ],
            "store": None if store is None else {"backend": store.backend, "writable": settings.allow_writes},
        }

    @app.post("/v1/classify", tags=["language models"], dependencies=auth)
    async def classify(body: TextsRequest) -> dict[str, Any]:
        """The label and its probability for each text (and, for a KG-enhanced classifier, the
        graph entities it linked)."""
        service = pick(body.model, "classify")
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        return {"model": service.name, "results": await run(service, "classify", texts)}

    @app.post("/v1/ner", tags=["language models"], dependencies=auth)
    async def ner(body: TextsRequest) -> dict[str, Any]:
        """Entities in each text (words split on white space), with a tag per word."""
        service = pick(body.model, "ner")
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        found = await run(service, "ner", [t.split() or ["."] for t in texts])
        results = [{"tags": tags, "entities": [{"type": t, "text": s} for t, s in ents]} for tags, ents in found]
        return {"model": service.name, "results": results}

    @app.post("/v1/qa", tags=["language models"], dependencies=auth)
    async def qa(body: QARequest) -> dict[str, Any]:
        """The answer span of the question in the context."""
        service = pick(body.model, "qa")
        (answer,) = await run(service, "qa", [(body.question, body.context)])
        return {"model": service.name, "answer": answer}

    @app.post("/v1/embeddings", tags=["language models"], dependencies=auth)
    async def embeddings(body: EmbeddingsRequest) -> dict[str, Any]:
        """Text embeddings, in the OpenAI API's request and response format."""
        service = pick(body.model, "embeddings")
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors = await run(service, "embeddings", texts)
        used = sum(service.tokens("embeddings", t) for t in texts)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": service.name,
            "usage": {"prompt_tokens": used, "total_tokens": used},
        }

    @app.post("/v1/link-prediction", tags=["knowledge graph"], dependencies=auth)
    async def link_prediction(body: LinkPredictionRequest) -> dict[str, Any]:
        """The top-k tails of (head, relation, ?) or heads of (?, relation, tail), each with whether it
        is a known fact and the fact paths (from the store) linking it to the query's entity; a rules
        model's answers also carry the rules that predict them, each with one path of facts (and
        their provenance) that makes it fire."""
        if (body.head is None) == (body.tail is None):
            raise HTTPException(422, "give exactly one of head (rank tails) and tail (rank heads)")
        service = pick(body.model, "link-prediction")
        entity = service.entity(body.head if body.head is not None else body.tail)  # type: ignore[attr-defined]
        relation = service.relation(body.relation)  # type: ignore[attr-defined]
        direction = "tail" if body.head is not None else "head"
        (ranked,) = await run(service, "link-prediction", [(entity, relation, direction, body.k)])
        answers = [
            {
                "rank": a.rank,
                "id": a.id,
                "label": a.label,
                "score": a.score,
                "known": a.known,
                "paths": [[{"head": h, "relation": r, "tail": t} for h, r, t in p] for p in a.paths],
            }
            | ({} if a.rules is None else {"rules": a.rules})
            for a in ranked
        ]
        query = {"head": body.head} if body.head is not None else {"tail": body.tail}
        return {"model": service.name, **query, "relation": body.relation, "answers": answers}

    @app.post("/v1/ask", tags=["knowledge graph"], dependencies=auth)
    async def ask(body: AskRequest) -> dict[str, Any]:
        """KGQA: answers to a question about a [bracketed] entity, each with its evidence paths."""
        service = pick(body.model, "ask")
        (response,) = await run(service, "ask", [(body.question, body.top, body.paths)])
        return {"model": service.name, **response}

    @app.post("/v1/extract", tags=["knowledge graph"], dependencies=auth)
    async def extract(body: ExtractRequest) -> dict[str, Any]:
        """Mentions and relations in a text, with character spans (relations scoring at least
        ``threshold``, by default the extractor's own)."""
        service = pick(body.model, "extract")
        (found,) = await run(service, "extract", [(body.text, body.threshold)])
        mentions = [
            {"text": m.text, "type": m.type, "start": m.start, "end": m.end, "score": m.score} for m in found.mentions
        ]
        relations = [
            {"head": mentions[found.mentions.index(r.head)], "relation": r.type,
             "tail": mentions[found.mentions.index(r.tail)], "score": r.score}
            for r in found.relations
        ]  # fmt: skip
        return {"model": service.name, "mentions": mentions, "relations": relations}

    @app.post("/v1/link", tags=["knowledge graph"], dependencies=auth)
    async def link(body: TextRequest) -> dict[str, Any]:
        """Entities of the store mentioned in a text (by label or id), with character spans."""
        service = pick(body.model, "link")
        (found,) = await run(service, "link", [body.text])
        labels = service.labels  # type: ignore[attr-defined]
        return {
            "mentions": [
                {"start": m.start, "end": m.end, "text": body.text[m.start : m.end], "entity": m.entity,
                 "label": labels.get(m.entity), "method": m.method, "score": m.score}
                for m in found
            ]
        }  # fmt: skip

    @app.get("/v1/entities", tags=["knowledge graph"], dependencies=auth)
    def entities(
        q: str = Query(..., min_length=1, max_length=200, description="Part of a label or id."),
        limit: int = Query(20, ge=1, le=200),
    ) -> dict[str, Any]:
        """Store entities whose label or id matches ``q``: exact matches first, then prefixes."""
        return {"entities": the_store().search(q, limit)}

    @app.post("/v1/subgraph", tags=["knowledge graph"], dependencies=auth)
    def subgraph(body: SubgraphRequest) -> dict[str, Any]:
        """Entities within ``hops`` of the seeds and the facts among them, with their provenance."""
        return the_store().subgraph(body.seeds, body.hops, body.max_entities)

    @app.post("/v1/evidence", tags=["knowledge graph"], dependencies=auth)
    def evidence(body: EvidenceRequest) -> dict[str, Any]:
        """The source sentences of extracted facts: document, sentence, and character spans."""
        return {"evidence": the_store().evidence([(f.head, f.relation, f.tail) for f in body.facts])}

    @app.post("/v1/cypher", tags=["knowledge graph"], dependencies=auth)
    def cypher(body: CypherRequest) -> dict[str, Any]:
        """Read-only Cypher against the store: a write clause is refused with 403."""
        gs = the_store()
        try:
            rows = gs.query(body.query, body.params)
        except ReadOnlyQueryError:
            raise
        except StoreError as err:
            raise HTTPException(400, str(err)) from None
        return {"rows": rows}

    @app.post("/v1/documents", tags=["store writes"], dependencies=auth)
    async def write_document(body: DocumentRequest) -> dict[str, Any]:
        """Extract a document's facts and write them to the store with their evidence, replacing
        what the document supported before (only with ``--allow-writes``)."""
        gs = writable()
        service = pick(body.model, "extract")
        (found,) = await run(service, "extract", [(body.text, body.threshold)])
        name = service.extractor.name  # type: ignore[attr-defined]
        return await asyncio.to_thread(gs.write_document, body.id, body.text, found, name)

    @app.delete("/v1/documents/{doc_id:path}", tags=["store writes"], dependencies=auth)
    async def delete_document(doc_id: str) -> dict[str, Any]:
        """Remove a document and the facts only it supported (only with ``--allow-writes``)."""
        return await asyncio.to_thread(writable().delete_document, doc_id)

    mount_page(app)
    return app


__all__ = ["ServeSettings", "create_app"]
