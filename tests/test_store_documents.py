"""Update and delete by document, on LadybugDB and on a real FalkorDB server.

A property test drives random batches of document writes and deletes (delete-only and empty
batches included) through the store and through a brute-force model in plain Python, and
compares everything observable after every batch.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kelm.errors import StoreError
from kelm.kg.model import Entity, KnowledgeGraph, Provenance, Relation, Triple
from kelm.kg.store import GraphStore, documents, open_store
from kelm.kg.store.documents import EXTRACTED, DocumentFacts, DocumentRecord, Evidence

BASE_ENTITIES = [f"e{i}" for i in range(4)]
POOL = [f"e{i}" for i in range(8)]
RELATIONS = ["r0", "r1", "r2"]
DOCS = [f"d{i}" for i in range(5)]


def base_graph() -> KnowledgeGraph:
    """Imported facts among e0..e3, one of which documents will also support."""
    kg = KnowledgeGraph("base")
    for e in BASE_ENTITIES:
        kg.entities[e] = Entity(e, f"label {e}")
    kg.add_triples("train", [Triple("e0", "r0", "e1", Provenance("import", 1.0, "2020")), Triple("e2", "r1", "e3")])
    return kg


def record(doc: str, version: int = 0) -> DocumentRecord:
    return DocumentRecord(doc, f"{doc}.txt", f"sha{version}", 100, "test-extractor", f"2026-01-0{version % 9 + 1}")


def evidence(doc: str, head: str, rel: str, tail: str, n: int, score: float) -> Evidence:
    return Evidence(
        doc,
        head,
        rel,
        tail,
        f"{head} {rel} {tail}.",
        n * 10,
        n * 10 + 9,
        n * 10,
        n * 10 + 2,
        n * 10 + 6,
        n * 10 + 8,
        "test-extractor",
        score,
        f"2026-02-{n % 28 + 1:02d}",
    )


def facts_of(doc: str, triples: list[tuple[str, str, str, float]], version: int = 0) -> DocumentFacts:
    evs = [evidence(doc, h, r, t, n, s) for n, (h, r, t, s) in enumerate(triples)]
    ents = [Entity(e, f"label {e}", types=("T",)) for e in POOL]
    return DocumentFacts(record(doc, version), evs, ents, [Relation(r, f"rel {r}") for r in RELATIONS])


@dataclass
class Model:
    """What the store must hold: the base graph plus the evidence of the documents alive now."""

    docs: dict[str, DocumentFacts] = field(default_factory=dict)

    def apply(self, writes: list[DocumentFacts], deletes: list[str]) -> None:
        for d in deletes:
            self.docs.pop(d, None)
        for w in writes:
            self.docs[w.document.id] = w

    def expected(self) -> tuple:
        base = base_graph()
        imported = {t.key() for t in base.triples()}
        evs = [ev for w in self.docs.values() for ev in w.evidence]
        facts = {(t.head, t.relation, t.tail, "train", t.provenance) for t in base.triples()}
        for key in sorted({ev.fact() for ev in evs} - imported):
            support = [ev for ev in evs if ev.fact() == key]
            prov = Provenance(EXTRACTED, max(ev.score for ev in support), max(ev.time for ev in support))
            facts.add((*key, "train", prov))
        entities = set(base.entities) | {e for f in facts for e in f[:3:2]}
        documents = sorted((w.document.id, w.document.sha256) for w in self.docs.values())
        return sorted(facts, key=repr), sorted(entities), sorted(evs, key=_evidence_order), documents


def _evidence_order(ev: Evidence) -> tuple:
    return (ev.document, ev.char_start, ev.head_start, ev.tail_start, ev.relation)


def observed(store: GraphStore) -> tuple:
    kg = store.export()
    facts = {(t.head, t.relation, t.tail, split, t.provenance) for split in kg.splits for t in kg.splits[split]}
    documents = [(d.id, d.sha256) for d in store.documents()]
    return sorted(facts, key=repr), sorted(kg.entities), store.evidence(), documents


Opener = Callable[[], GraphStore]


@pytest.fixture(params=["ladybug", "falkordb"])
def backend_opener(request: pytest.FixtureRequest) -> Iterator[Callable[[], Opener]]:
    """A factory of fresh stores of one backend (each call: a new empty store)."""
    if request.param == "ladybug":
        with tempfile.TemporaryDirectory() as root:
            yield lambda: lambda p=Path(root) / uuid.uuid4().hex: open_store(p, "ladybug")  # type: ignore[misc]
        return
    server = request.getfixturevalue("falkordb_server")
    yield lambda: lambda n=f"docs-{uuid.uuid4().hex[:10]}": open_store(n, "falkordb", uri=server.uri)  # type: ignore[misc]


triple_st = st.tuples(
    st.sampled_from(POOL), st.sampled_from(RELATIONS), st.sampled_from(POOL), st.sampled_from([0.3, 0.6, 0.9])
)
batch_st = st.tuples(
    st.lists(st.tuples(st.sampled_from(DOCS), st.lists(triple_st, max_size=4)), max_size=2),
    st.lists(st.sampled_from(DOCS), max_size=2),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(batch_st, min_size=1, max_size=6))
def test_random_writes_and_deletes_match_a_brute_force_model(
    backend_opener: Callable[[], Opener], batches: list
) -> None:
    with backend_opener()() as store:
        store.import_graph(base_graph())
        model = Model()
        for version, (raw_writes, raw_deletes) in enumerate(batches):
            writes, names = [], set()
            for doc, triples in raw_writes:
                if doc not in names:
                    names.add(doc)
                    writes.append(facts_of(doc, triples, version))
            deletes = [d for d in dict.fromkeys(raw_deletes) if d not in names]
            store.apply_documents(writes, deletes)
            model.apply(writes, deletes)
            assert observed(store) == model.expected()


@pytest.fixture(params=["ladybug", "falkordb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GraphStore]:
    if request.param == "ladybug":
        with open_store(tmp_path / "store", "ladybug") as s:
            yield s
        return
    server = request.getfixturevalue("falkordb_server")
    with open_store(f"docs-{uuid.uuid4().hex[:10]}", "falkordb", uri=server.uri) as s:
        yield s


def test_a_shared_fact_loses_only_the_deleted_documents_support(store: GraphStore) -> None:
    store.import_graph(base_graph())
    store.apply_documents(
        [facts_of("a", [("e5", "r0", "e6", 0.9), ("e0", "r0", "e1", 0.5)]), facts_of("b", [("e5", "r0", "e6", 0.4)])]
    )
    fact = next(f for f in store.iter_facts() if (f.head, f.tail) == ("e5", "e6"))
    assert (fact.source, fact.confidence) == (EXTRACTED, 0.9)
    report = store.apply_documents(deletes=["a"])
    assert (report.documents_deleted, report.evidence_removed, report.facts_removed) == (1, 2, 0)
    fact = next(f for f in store.iter_facts() if (f.head, f.tail) == ("e5", "e6"))
    assert fact.confidence == 0.4  # the best remaining support
    assert [e.document for e in store.evidence(facts=[("e5", "r0", "e6")])] == ["b"]
    imported = next(f for f in store.iter_facts() if (f.head, f.tail) == ("e0", "e1"))
    assert (imported.source, imported.confidence) == ("import", 1.0)  # an imported fact keeps its provenance

    report = store.apply_documents(deletes=["b"])
    assert (report.facts_removed, report.entities_removed) == (1, 2)
    assert not store.get_entities(["e5", "e6"]) and store.get_entities(["e0"])
    assert store.documents() == []


def test_rewriting_a_document_replaces_its_facts(store: GraphStore) -> None:
    store.apply_documents([facts_of("a", [("e1", "r0", "e2", 0.8), ("e2", "r1", "e3", 0.7)])])
    report = store.apply_documents([facts_of("a", [("e1", "r0", "e2", 0.6), ("e4", "r2", "e5", 0.5)], 1)])
    assert (report.facts_added, report.facts_removed, report.evidence_removed, report.evidence_added) == (1, 1, 2, 2)
    assert sorted((f.head, f.relation, f.tail, f.confidence) for f in store.iter_facts()) == [
        ("e1", "r0", "e2", 0.6),
        ("e4", "r2", "e5", 0.5),
    ]
    assert [d.sha256 for d in store.documents()] == ["sha1"]
    assert store.get_entities(["e4"])["e4"].label == "label e4"
    assert not store.get_entities(["e3"])  # e3 was created by the old version only


def test_a_failed_batch_leaves_the_store_as_it_was(store: GraphStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.apply_documents([facts_of("a", [("e1", "r0", "e2", 0.8)])])
    before = observed(store)
    with pytest.raises(StoreError, match="twice"):
        store.apply_documents([facts_of("a", [])], deletes=["a"])

    def fail(*args: object) -> int:
        raise RuntimeError("disk full")

    # Fail after every write of the batch but the last step.
    monkeypatch.setattr(documents, "_remove_orphans", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        store.apply_documents([facts_of("a", [("e6", "r0", "e7", 0.5)]), facts_of("b", [("e1", "r1", "e3", 0.5)])])
    assert observed(store) == before


CHILD = """
import sys, time
from kelm.kg.store import documents, open_store
from kelm.kg.store.documents import DocumentFacts, DocumentRecord, Evidence
backend, where, uri = sys.argv[1], sys.argv[2], sys.argv[3] or None
writes = []
for d in range(5):
    evs = [Evidence(f"big{d}", f"x{d}_{i}", "r0", f"y{i % 50}", "s", 0, 1, 0, 1, 0, 1, "m", 0.5, "t")
           for i in range(200)]
    writes.append(DocumentFacts(DocumentRecord(f"big{d}", None, "h", 1, "m", "t"), evs))
last_step = documents._remove_orphans

def stall(*args):
    n = last_step(*args)
    print("written", flush=True)  # every write of the batch is made, nothing is committed yet
    time.sleep(120)
    return n

documents._remove_orphans = stall
with open_store(where, backend, uri=uri) as s:
    s.apply_documents(writes, deletes=["a"])
    print("done", flush=True)
"""


@pytest.mark.parametrize("backend", ["ladybug", "falkordb"])
def test_a_killed_write_leaves_the_store_as_it_was(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("falkordb_server") if backend == "falkordb" else None
    where = str(tmp_path / "store") if server is None else f"kill-{uuid.uuid4().hex[:8]}"
    uri = server.uri if server is not None else None
    with open_store(where, backend, uri=uri) as store:
        store.import_graph(base_graph())
        store.apply_documents([facts_of("a", [("e5", "r0", "e6", 0.9)])])
        before = observed(store)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, backend, where, uri or ""], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "written"
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert child.stdout.read() == ""  # it never finished
    with open_store(where, backend, uri=uri) as store:
        assert observed(store) == before
