"""The page at ``/`` in a real headless Chromium (Debian's, driven by Playwright): it answers a typed
question and draws the answer's evidence path, ranks a link prediction with its paths, draws an
entity's neighbourhood, shows an extracted fact's source sentence, and fetches nothing from any
other origin. Screenshots go to the test's folder (and to $KELM_TEST_ARTIFACTS when set)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serving import TOKEN, Server

from kelm.app.serve import ServeSettings, create_app, load_service
from kelm.kg.model import Relation
from kelm.kg.store import open_store
from kelm.kg.store.documents import DocumentFacts, DocumentRecord, Evidence
from kelm.kgqa.questions import read_questions

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip
SENTENCE = "Everyone says Person 0 knows Person 1 well."

if CHROMIUM is None and not os.environ.get("KELM_REQUIRE_BROWSER"):
    pytest.skip("no Chromium (Debian package 'chromium'; `make test` installs it as root)", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    assert CHROMIUM is not None, "KELM_REQUIRE_BROWSER is set but Chromium is not installed"
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def _document(store_path: Path) -> None:
    """One extracted fact, (p0, knows, p1), with its source sentence."""
    time = "2026-01-01T00:00:00+00:00"
    start = SENTENCE.index("Person 0")
    ev = Evidence("note-1", "p0", "knows", "p1", SENTENCE, 0, len(SENTENCE), start, start + 8,
                  SENTENCE.index("Person 1"), SENTENCE.index("Person 1") + 8, "hand", 0.9, time)  # fmt: skip
    record = DocumentRecord("note-1", "note-1.txt", "0" * 64, len(SENTENCE), "hand", time)
    with open_store(store_path) as gs:
        gs.apply_documents([DocumentFacts(record, [ev], relations=[Relation("knows", "knows")])])


@pytest.fixture(scope="module")
def qa_server(kgqa_runs: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root, _ = kgqa_runs
    store_path = tmp_path_factory.mktemp("page") / "store"
    copy = shutil.copytree if (root / "store").is_dir() else shutil.copy
    copy(root / "store", store_path)
    _document(store_path)
    store = open_store(store_path, read_only=True)
    app = create_app([load_service(root / "kg")], store, ServeSettings(TOKEN))
    with Server(app) as s:
        yield s
    store.close()


def _open(browser: Any, server: Server, requests: list[str]) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 860})
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"http://127.0.0.1:{server.port}/#token={TOKEN}")
    page.wait_for_selector("#search-section:not([hidden])")  # connected: /v1/models answered
    assert not page.is_visible("#token-form")
    return page


def _shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path))
    artifacts = os.environ.get("KELM_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / name)
    return path


def _drawn_evidence(page: Any) -> set[tuple[str, str, str]]:
    edges = page.eval_on_selector_all(
        "#graph .edge.evidence", "es => es.map(e => [e.dataset.head, e.dataset.relation, e.dataset.tail])"
    )
    return {tuple(e) for e in edges}


def test_a_typed_question_gets_answers_and_its_evidence_path_drawn(
    browser: Any, qa_server: Server, kgqa_runs: tuple[Path, dict], tmp_path: Path
) -> None:
    root, _ = kgqa_runs
    question = next(
        q.text for q in read_questions(root / "data" / "test_2hop.txt")
        if qa_server.call("POST", "/v1/ask", {"question": q.text})[1]["answers"][0]["paths"]
    )  # fmt: skip
    _, want, _ = qa_server.call("POST", "/v1/ask", {"question": question, "top": 10, "paths": 3})
    requests: list[str] = []
    page = _open(browser, qa_server, requests)
    page.fill("#question", question)
    page.click("#ask-form button")
    page.wait_for_selector(f'#graph[data-answer="{want["answers"][0]["id"]}"]')
    shown = page.eval_on_selector_all("#answers li", "ls => ls.map(l => l.dataset.id)")
    assert shown == [a["id"] for a in want["answers"]]
    first = want["answers"][0]
    path_facts = {(f["head"], f["relation"], f["tail"]) for p in first["paths"] for f in p}
    assert _drawn_evidence(page) == path_facts  # exactly the first answer's paths, in red
    assert page.eval_on_selector_all("#paths .path", "ps => ps.length") == len(first["paths"])
    drawn_nodes = set(page.eval_on_selector_all("#graph .node", "ns => ns.map(n => n.dataset.id)"))
    assert {want["topic_id"], first["id"]} <= drawn_nodes
    assert page.get_attribute(f'#graph .node[data-id="{want["topic_id"]}"]', "class").split().count("seed") == 1
    _shot(page, tmp_path, "page-ask.png")
    if len(want["answers"]) > 1:  # choosing another answer draws its paths instead
        page.click("#answers li:nth-child(2)")
        page.wait_for_selector(f'#graph[data-answer="{want["answers"][1]["id"]}"]')
        second = {(f["head"], f["relation"], f["tail"]) for p in want["answers"][1]["paths"] for f in p}
        assert _drawn_evidence(page) == second
    origin = f"http://127.0.0.1:{qa_server.port}/"
    assert requests and all(u.startswith(origin) or u.startswith("data:") for u in requests), requests
    page.close()


def test_search_draws_the_neighbourhood_and_an_extracted_fact_shows_its_sentence(
    browser: Any, qa_server: Server, tmp_path: Path
) -> None:
    page = _open(browser, qa_server, [])
    page.fill("#search", "Person 0")
    page.click("#search-form button")
    page.wait_for_selector('#search-results li[data-id="p0"]')
    assert page.eval_on_selector_all("#search-results li", "ls => ls[0].dataset.id") == "p0"  # exact match first
    page.click('#search-results li[data-id="p0"]')
    page.wait_for_selector('#graph .node.seed[data-id="p0"]')
    _, sg, _ = qa_server.call("POST", "/v1/subgraph", {"seeds": ["p0"], "hops": 1})
    incident = {(f["head"], f["relation"], f["tail"]) for f in sg["facts"] if "p0" in (f["head"], f["tail"])}
    drawn = page.eval_on_selector_all("#graph .edge", "es => es.map(e => [e.dataset.head, e.dataset.relation, "
                                      "e.dataset.tail, e.classList.contains('extracted')])")  # fmt: skip
    assert {tuple(e[:3]) for e in drawn} == incident
    assert [tuple(e[:3]) for e in drawn if e[3]] == [("p0", "knows", "p1")]
    page.click('#graph .edge.extracted[data-relation="knows"]', force=True)
    page.wait_for_selector("#details blockquote.sentence")
    assert page.inner_text("#details blockquote.sentence").startswith(SENTENCE)
    assert page.eval_on_selector_all("#details mark", "ms => ms.map(m => m.textContent)") == ["Person 0", "Person 1"]
    _shot(page, tmp_path, "page-evidence.png")
    page.close()


def test_link_prediction_answers_with_known_facts_and_paths(browser: Any, server: Server, tmp_path: Path) -> None:
    _, models, _ = server.call("GET", "/v1/models")
    kge = next(m for m in models["models"] if m["kind"] == "kge")
    relation = kge["relations"][0]["id"]
    _, hits, _ = server.call("GET", "/v1/entities?q=virus&limit=1")
    head = hits["entities"][0]["id"]
    _, want, _ = server.call("POST", "/v1/link-prediction", {"head": head, "relation": relation, "k": 10})
    page = _open(browser, server, [])
    page.fill("#lp-head", head)
    page.select_option("#lp-relation", relation)
    page.click("#predict-form button")
    page.wait_for_selector("#answers li")
    shown = page.eval_on_selector_all("#answers li", "ls => ls.map(l => l.dataset.id)")
    assert shown == [a["id"] for a in want["answers"]]
    known = page.eval_on_selector_all("#answers li", "ls => ls.map(l => !!l.querySelector('.badge.known'))")
    assert known == [a["known"] for a in want["answers"]]
    first = want["answers"][0]
    page.wait_for_selector(f'#graph .node.answer[data-id="{first["id"]}"]')
    assert _drawn_evidence(page) == {(f["head"], f["relation"], f["tail"]) for p in first["paths"] for f in p}
    if not first["known"]:  # the predicted fact itself is drawn, dotted
        assert page.query_selector(f'#graph .edge.predicted[data-tail="{first["id"]}"]') is not None
    _shot(page, tmp_path, "page-link-prediction.png")
    page.close()


def test_a_wrong_token_asks_for_the_token(browser: Any, qa_server: Server) -> None:
    page = browser.new_page()
    response = page.goto(f"http://127.0.0.1:{qa_server.port}/#token=not-the-token-000000")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    page.wait_for_selector("#token-form:not([hidden])")
    assert "wrong token" in page.inner_text("#status")
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    page.wait_for_selector("#status:has-text('kgqa')")
    assert page.is_visible("#ask-section") and page.is_visible("#search-section")
    page.close()
