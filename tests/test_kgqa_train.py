"""KGQA models through the engine: the KG-enhanced model beats the LM-only baseline on a 2-hop task."""

from __future__ import annotations

import json

import pytest
import torch

from kelm.cli import main
from kelm.kgqa.answer import NO_ENTITY, QAModel
from kelm.kgqa.questions import read_questions

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runs(kgqa_runs):
    """configs/kgqa/tiny.toml on 2-hop questions, LM-only and KG models (see conftest)."""
    return kgqa_runs


def test_kg_model_beats_lm_only_on_two_hops(runs) -> None:
    _, metrics = runs
    lm, kg = metrics["lm"]["test"], metrics["kg"]["test"]
    assert kg["answer_recall"] == 1.0
    assert kg["hits@1_2hop"] >= 0.8
    assert kg["hits@1_2hop"] >= lm["hits@1_2hop"] + 0.25
    assert kg["f1_2hop"] > lm["f1_2hop"]
    for m in (lm, kg):
        assert 0 <= m["f1"] <= 1 and m["threshold"] in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)
        assert m["hits@1"] == pytest.approx(m["hits@1_2hop"])


def test_ask_gives_answers_with_evidence_and_no_entity_message(runs, capsys) -> None:
    root, _ = runs
    qa = QAModel(root / "kg")
    questions = read_questions(root / "data" / "test_2hop.txt")[:10]
    facts = {(qa.graph.names[h], qa.graph.rel_names[r], qa.graph.names[t]) for h, r, t in qa.graph.triples}
    right = []
    for q in questions:
        response = qa.ask(q.text)
        assert response.topic == q.topic and response.answers
        if response.answers[0].name in q.answers:
            right.append(q)
        for a in response.answers:
            assert a.evidence and all(len(p) <= 3 and set(p) <= facts for p in a.evidence)
            assert q.topic in (a.evidence[0][0][0], a.evidence[0][0][2])
    assert len(right) >= 7
    q = right[0]  # a 2-hop answer: its evidence is a 2-fact path

    for text in ("what is the capital of france", "who is [Nobody At All]"):
        r = qa.ask(text)
        assert r.answers == [] and r.message.startswith(NO_ENTITY)
    capsys.readouterr()
    assert main(["kgqa", "ask", "--model", str(root / "kg"), q.text]) == 0
    printed = capsys.readouterr().out
    assert f"topic: {q.topic}" in printed and "->" in printed
    assert main(["kgqa", "ask", "--model", str(root / "lm"), "no brackets here"]) == 0
    assert NO_ENTITY in capsys.readouterr().out


def test_two_process_training_through_the_launcher(runs) -> None:
    """`kelm kgqa train --nproc 2`: two gloo workers get the same flags and write one summary."""
    root, _ = runs
    out = root / "kg2"
    args = ["kgqa", "train", str(root / "qa.toml"), "--data", str(root / "data"), "--store", str(root / "store")]
    flags = ["--model", "kg", "--strategy", "ddp", "--max-steps", "3", "--nproc", "2", "--out", str(out)]
    assert main([*args, *flags]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 3
    assert 0 <= metrics["test"]["hits@1_2hop"] <= 1


def test_served_answers_equal_the_offline_ones(runs) -> None:
    from serving import TOKEN, Server

    from kelm.app.serve import ServeSettings, create_app, load_service

    root, _ = runs
    qa = QAModel(root / "kg")
    question = read_questions(root / "data" / "test_2hop.txt")[0].text
    app = create_app([load_service(root / "kg")], None, ServeSettings(TOKEN))
    with Server(app) as server:
        status, body, _ = server.call("POST", "/v1/ask", {"question": question, "top": 5})
        assert status == 200
        offline = json.loads(json.dumps(qa.ask(question, 5).as_dict()))
        assert {k: body[k] for k in offline if k != "answers"} == {k: v for k, v in offline.items() if k != "answers"}
        assert [{k: a[k] for k in b} for a, b in zip(body["answers"], offline["answers"], strict=True)] == offline[
            "answers"
        ]
        graph = qa.graph
        facts = {(graph.ids[h], graph.rel_ids[r], graph.ids[t]) for h, r, t in graph.triples}
        for answer in body["answers"]:  # the id paths are the name paths, fact by fact, and facts of the graph
            assert len(answer["paths"]) == len(answer["evidence"])
            for ids, names in zip(answer["paths"], answer["evidence"], strict=True):
                assert [(f["head"], f["relation"], f["tail"]) for f in ids] and all(
                    (f["head"], f["relation"], f["tail"]) in facts for f in ids
                )
                assert [graph.names[graph.by_id[f["head"]]] for f in ids] == [n[0] for n in names]
        status, body, _ = server.call("POST", "/v1/ask", {"question": "who is [Nobody At All]"})
        assert status == 200 and body["answers"] == [] and body["message"].startswith(NO_ENTITY)
