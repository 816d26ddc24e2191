"""Explanations a person can check: rule-backed answers from `kelm reason predict` and the server's
link-prediction route carry the rule and a path of facts that exists in the store, with each
fact's provenance; KGQA answers carry the rule each evidence path instantiates."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from serving import TOKEN, Server

from kelm.app.serve import ServeSettings, create_app
from kelm.app.serve.services import load_service
from kelm.kg.model import KnowledgeGraph, Provenance, Triple
from kelm.kg.store import open_store
from kelm.kgqa.evidence import path_rule
from kelm.kgqa.questions import read_questions

SOURCE, TIME = "families.tsv", "2026-01-01T00:00:00+00:00"


def family_kg(families: int = 15) -> KnowledgeGraph:
    """Parents, children and spouses; every fact's provenance names its source file and line."""
    kg = KnowledgeGraph("families")
    facts = []
    for f in range(families):
        p, q, kids = f"m{f}", f"w{f}", (f"a{f}", f"b{f}")
        facts.append((p, "married", q))
        for k in kids:
            facts += [(p, "parent", k), (k, "child", p), (q, "parent", k), (k, "child", q)]
    kg.add_triples("train", [Triple(*t, Provenance(f"{SOURCE}:{i + 1}", 1.0, TIME)) for i, t in enumerate(facts)])
    return kg


def kelm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kelm.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def mined_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("explain")
    with open_store(root / "store") as store:
        store.import_graph(family_kg(), replace=True)
    done = kelm("reason", "mine", "--store", str(root / "store"), "--seconds", "4", "--out", str(root / "rules"))
    assert done.returncode == 0, done.stderr
    return root / "store", root / "rules"


def body_relations(rule: str) -> list[str]:
    """The relations of a rule's body atoms, in order (``h(X, Y) <= b1(X, A), b2(A, Y)``)."""
    return re.findall(r"(\w+)\(", rule.split("<=")[1])


def grounds(rule: dict, head: str, tail: str) -> bool:
    """The path's facts are the rule's body atoms in order, chained from the entity bound to the
    first body atom's head variable, for the predicted fact ``(head, relation, tail)``."""
    path = rule["path"]
    head_atom, body = rule["rule"].split("<=")
    if [f["relation"] for f in path] != body_relations(rule["rule"]):
        return False
    args = re.findall(r"\((.+?), (.+?)\)", head_atom)[0]
    bound = {args[0]: head, args[1]: tail}
    first = re.findall(r"\((.+?), (.+?)\)", body)[0]
    at = next(bound[a] for a in first if a in bound)
    for f in path:
        if at not in (f["head"], f["tail"]):
            return False
        at = f["tail"] if f["head"] == at else f["head"]
    return True


def stored_facts(store_path: Path) -> dict[tuple[str, str, str], Provenance | None]:
    with open_store(store_path, read_only=True) as store:
        return {t.key(): t.provenance for t in store.export().triples()}


def test_predict_answers_carry_rules_and_stored_paths_with_provenance(mined_store: tuple[Path, Path]) -> None:
    store_path, rules = mined_store
    facts = stored_facts(store_path)
    done = kelm("reason", "predict", str(rules), "-r", "child", "--head", "a3", "--json")
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)["answers"]
    assert {a["id"] for a in answers[:2]} == {"m3", "w3"}  # a3's parents, found through the rules
    checked = 0
    for a in answers:
        assert a["rules"], "rules alone rank only what some rule predicts"
        for r in a["rules"]:
            assert r["path"] and grounds(r, "a3", a["id"]), r
            for f in r["path"]:
                key = (f["head"], f["relation"], f["tail"])
                assert key in facts and f["source"] == facts[key].source and f["time"] == TIME
                checked += 1
    assert checked >= 4


def test_served_link_prediction_explains_each_rule_backed_answer(mined_store: tuple[Path, Path]) -> None:
    store_path, rules = mined_store
    facts = stored_facts(store_path)
    store = open_store(store_path, read_only=True)
    try:
        app = create_app([load_service(rules)], store, ServeSettings(TOKEN))
        with Server(app) as server:
            status, models, _ = server.call("GET", "/v1/models")
            assert status == 200 and "rules" in {m["kind"] for m in models["models"]}
            status, body, _ = server.call(
                "POST", "/v1/link-prediction", {"model": "rules", "tail": "b7", "relation": "parent", "k": 4}
            )
    finally:
        store.close()
    assert status == 200, body
    answers = body["answers"]
    assert {a["id"] for a in answers[:2]} == {"m7", "w7"}
    backed = [a for a in answers if a["score"] > 0]
    assert backed and all(a["rules"] for a in backed)
    for a in backed:
        for r in a["rules"]:
            assert grounds(r, a["id"], "b7"), r
            assert all((f["head"], f["relation"], f["tail"]) in facts and f["source"].startswith(SOURCE)
                       for f in r["path"])  # fmt: skip


def test_path_rule_names_the_question_entity_x_and_the_answer_y() -> None:
    path = [("p1", "lives_in", "city2"), ("city2", "located_in", "country0")]
    assert path_rule(path, "p1") == "answer(X, Y) <= lives_in(X, A), located_in(A, Y)"
    back = [("p1", "works_for", "acme"), ("p4", "works_for", "acme")]
    assert path_rule(back, "p1") == "answer(X, Y) <= works_for(X, A), works_for(Y, A)"


def test_kgqa_answers_carry_rules_and_the_store_provenance_of_their_facts(kgqa_runs) -> None:
    root, _ = kgqa_runs
    service = load_service(root / "kg")
    with open_store(root / "store", read_only=True) as store:
        kg = store.export()
    stamped = KnowledgeGraph("stamped", kg.entities, kg.relations)
    stamped.add_triples("train", [Triple(*t.key(), Provenance("census", 0.5, TIME)) for t in kg.triples()])
    service.attach(stamped, None)
    questions = [q.text for q in read_questions(root / "data" / "test_2hop.txt")[:10]]
    with_paths = [a for found in service.run("ask", [(q, 3, 2) for q in questions]) for a in found["answers"]
                  if a["paths"]]  # fmt: skip
    assert len(with_paths) >= 5
    for a in with_paths:
        assert len(a["rules"]) == len(a["paths"])
        for rule, path in zip(a["rules"], a["paths"], strict=True):
            assert rule.startswith("answer(X, Y) <= ") and rule.count("(") == len(path) + 1
            assert all(f["source"] == "census" and f["confidence"] == 0.5 for f in path)
