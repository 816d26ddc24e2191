"""The store behind the server: one connection used under a lock, an entity catalogue for search,
the in-memory graph the services draw evidence from, and the document writes of
``--allow-writes`` (after each, everything derived from the graph is rebuilt)."""

from __future__ import annotations

import difflib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kelm.app.serve.services import EvidenceGraph, LinkerService, Service, UnknownName
from kelm.kg.store import GraphStore


@dataclass(frozen=True, slots=True)
class _Named:
    id: str
    label: str
    types: tuple[str, ...]
    keys: tuple[str, ...]  # lower-cased label and id (with spaces for ``_``)


class StoreView:
    """Reads and writes of the server's store, serialised: a store connection serves one query at
    a time. Services with an ``attach(kg, graph)`` method get the graph now and after each write."""

    def __init__(self, store: GraphStore, services: list[Service]):
        self.store = store
        self.lock = threading.Lock()
        self.services = services
        self.version = 0
        self._reload()

    # -- reading ----------------------------------------------------------------------------------
    def search(self, text: str, limit: int) -> list[dict[str, Any]]:
        """Entities whose label or id matches ``text``: exact first, then prefixes, word prefixes
        and substrings, shorter names first."""
        q = " ".join(text.lower().replace("_", " ").split())
        if not q:
            return []
        ranked = []
        for e in self._catalog:
            best = min((_match(q, k) for k in e.keys), default=4)
            if best < 4:
                ranked.append((best, len(e.label), e.id, e))
        ranked.sort(key=lambda x: x[:3])
        return [
            {"id": e.id, "label": e.label, "types": list(e.types), "degree": self._degree.get(e.id, 0)}
            for *_, e in ranked[:limit]
        ]

    def require(self, ids: Sequence[str]) -> None:
        """Raise `UnknownName` (404 with suggestions) for the first id the store does not hold."""
        for i in ids:
            if i not in self._ids:
                near = [m["id"] for m in self.search(i, 3)]
                raise UnknownName("entity", i, near)

    def subgraph(self, seeds: list[str], hops: int, max_entities: int) -> dict[str, Any]:
        """`GraphStore.subgraph` as JSON; facts carry their provenance (``source``, ``confidence``)."""
        self.require(seeds)
        with self.lock:
            sg = self.store.subgraph(seeds, hops=hops, max_entities=max_entities)
        out = sg.to_json(facts_key="facts")
        for row, fact in zip(out["facts"], sg.facts, strict=True):
            row["source"], row["confidence"] = fact.source, fact.confidence
        return out

    def evidence(self, facts: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
        """The sentences that support each fact, from the documents it was extracted from."""
        with self.lock:
            return [e.to_json() for e in self.store.evidence(facts=facts)]

    def query(self, cypher: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self.lock:
            return self.store.query(cypher, params)

    # -- writing (``--allow-writes``) ---------------------------------------------------------------
    def write_document(self, doc_id: str, text: str, extraction: Any, extractor: str) -> dict:
        """Replace document ``doc_id`` by the facts of ``extraction``, atomically; rebuild the views."""
        from kelm.extract.documents import Document
        from kelm.extract.to_graph import MentionLinker, document_facts

        with self.lock:
            linker = MentionLinker(self.store.iter_entities())
            doc = Document(doc_id, text, Path(f"api:{doc_id}"))
            facts = document_facts(doc, extraction, linker, extractor)
            report = self.store.apply_documents([facts])
            self._reload()
        return {"document": doc_id, "triples": len(facts.evidence), **report.to_dict()}

    def delete_document(self, doc_id: str) -> dict:
        """Remove a document and every fact only it supported; rebuild the views."""
        with self.lock:
            if not self.store.documents([doc_id]):
                known = [d.id for d in self.store.documents()]
                raise UnknownName("document", doc_id, difflib.get_close_matches(doc_id, known, n=3))
            report = self.store.apply_documents(deletes=[doc_id])
            self._reload()
        return {"document": doc_id, **report.to_dict()}

    def _reload(self) -> None:
        kg = self.store.export()
        graph = EvidenceGraph.from_graph(kg)
        self._catalog = [
            _Named(e.id, e.label or e.id, tuple(e.types), _keys(e.id, e.label)) for e in kg.entities.values()
        ]
        self._ids = set(kg.entities)
        degree: dict[str, int] = {}
        for t in kg.triples():
            degree[t.head] = degree.get(t.head, 0) + 1
            degree[t.tail] = degree.get(t.tail, 0) + 1
        self._degree = degree
        if not any(isinstance(s, LinkerService) for s in self.services):
            self.services.append(LinkerService(kg))
        for s in self.services:
            attach = getattr(s, "attach", None)
            if attach is not None:
                attach(kg, graph)
        self.version += 1


def _keys(entity_id: str, label: str | None) -> tuple[str, ...]:
    keys = {" ".join(entity_id.lower().replace("_", " ").split())}
    if label:
        keys.add(" ".join(label.lower().split()))
    return tuple(sorted(keys))


def _match(q: str, key: str) -> int:
    """0 exact, 1 prefix, 2 a word's prefix, 3 substring, 4 no match."""
    if key == q:
        return 0
    if key.startswith(q):
        return 1
    if f" {q}" in f" {key}":
        return 2
    return 3 if q in key else 4


__all__ = ["StoreView"]
