"""`kelm extract` end to end with a trained extractor: documents to a store with evidence,
re-extraction of a changed document, delete by document, and the loop back into KGE training.

The central check: after any update or delete, the store equals a fresh store built by
extracting only the documents that are left, in their latest version.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kelm.cli import main
from kelm.extract.extractor import TextMention
from kelm.extract.to_graph import MentionLinker
from kelm.kg.model import Entity, KnowledgeGraph, Triple
from kelm.kg.store import open_store
from kelm.linking.linker import normalize

THRESHOLD = "0.2"
ROOT = Path(__file__).resolve().parents[1]


def sentences_of(data_dir: Path, lo: int, hi: int) -> str:
    items = json.loads((data_dir / "re/conll04/train.json").read_text(encoding="utf-8"))[lo:hi]
    return "\n\n".join(" ".join(item["tokens"]) for item in items)


@pytest.fixture
def corpus(data_dir: Path, tmp_path: Path) -> Path:
    """Three documents; ``c`` repeats the sentences of ``a``, so they share facts."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(sentences_of(data_dir, 0, 6), encoding="utf-8")
    (docs / "b.txt").write_text(sentences_of(data_dir, 6, 12), encoding="utf-8")
    (docs / "c.txt").write_text(
        sentences_of(data_dir, 0, 6) + "\n\n" + sentences_of(data_dir, 12, 16), encoding="utf-8"
    )
    return docs


def extract(source: Path, model: Path, store: Path | str, *extra: str, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    args = ["extract", str(source), "-m", str(model), "--store", str(store), "--threshold", THRESHOLD, "--json"]
    assert main([*args, *extra]) == 0
    return json.loads(capsys.readouterr().out)


def state(store: Path | str, backend: str = "ladybug", uri: str | None = None) -> tuple:
    """Facts, entity ids, relations and evidence (without the time of extraction)."""
    with open_store(store, backend, uri=uri, read_only=True) as gs:
        kg = gs.export()
        evidence = [(e.document, e.fact(), e.sentence, e.head_start, e.tail_end, e.score) for e in gs.evidence()]
        facts = sorted((t.head, t.relation, t.tail, s, t.provenance.source) for s in kg.splits for t in kg.splits[s])
        return facts, sorted(kg.entities), evidence


def test_extract_update_and_delete_equal_a_fresh_extraction(
    conll04_run: tuple[Path, dict], corpus: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = conll04_run
    store = tmp_path / "store"
    dry = extract(corpus, run, store, "--dry-run", capsys=capsys)
    assert not store.exists() and dry["store"] is None and dry["triples"] > 0
    first = extract(corpus, run, store, capsys=capsys)
    assert first["extracted"] == 3 and first["triples"] == dry["triples"]
    assert first["store"]["evidence_added"] == first["triples"]

    texts = {p.name: p.read_text(encoding="utf-8") for p in corpus.iterdir()}
    with open_store(store, "ladybug", read_only=True) as gs:
        evidence = gs.evidence()
        entities = gs.get_entities([x for e in evidence for x in (e.head, e.tail)])
        shared = {e.fact() for e in evidence if e.document == "a.txt"} & {
            e.fact() for e in evidence if e.document == "c.txt"
        }
    assert shared, "document c repeats the sentences of a: they must share facts"
    for e in evidence:  # every span points into its document
        text = texts[e.document]
        assert text[e.char_start : e.char_end] == e.sentence
        assert e.char_start <= e.head_start < e.head_end <= e.char_end
        assert normalize(text[e.head_start : e.head_end]).replace(" ", "_") == e.head
        assert normalize(entities[e.tail].label) == normalize(text[e.tail_start : e.tail_end])

    again = extract(corpus, run, store, capsys=capsys)
    assert (again["extracted"], again["unchanged"]) == (0, 3)

    # delete b: the store is what extracting a and c alone gives
    assert main(["kg", "delete", "--document", "b.txt", "--store", str(store)]) == 0
    only_ac = tmp_path / "ac"
    only_ac.mkdir()
    for name in ("a.txt", "c.txt"):
        (only_ac / name).write_text(texts[name], encoding="utf-8")
    extract(only_ac, run, tmp_path / "fresh_ac", capsys=capsys)
    assert state(store) == state(tmp_path / "fresh_ac")

    # change a: its facts are replaced; the shared ones stay, supported by c
    (corpus / "a.txt").write_text(sentences_of(data_dir, 16, 20), encoding="utf-8")  # none shared any more
    (corpus / "b.txt").unlink()
    changed = extract(corpus, run, store, capsys=capsys)
    assert (changed["extracted"], changed["unchanged"]) == (1, 1)
    fresh = extract(corpus, run, tmp_path / "fresh_changed", capsys=capsys)
    assert fresh["extracted"] == 2
    assert state(store) == state(tmp_path / "fresh_changed")
    with open_store(store, "ladybug", read_only=True) as gs:
        assert {f.fact() for f in gs.evidence()} >= shared
        assert {e.document for e in gs.evidence(facts=sorted(shared))} == {"c.txt"}


def test_falkordb_gets_the_same_facts_and_deletes_alike(
    conll04_run: tuple[Path, dict], corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], falkordb_server
) -> None:
    run, _ = conll04_run
    remote = ["--backend", "falkordb", "--uri", falkordb_server.uri]
    extract(corpus, run, tmp_path / "store", capsys=capsys)
    extract(corpus, run, "extracted", *remote, capsys=capsys)
    assert state(tmp_path / "store") == state("extracted", "falkordb", falkordb_server.uri)
    for where in (["--store", str(tmp_path / "store")], ["--store", "extracted", *remote]):
        assert main(["kg", "delete", "-d", "a.txt", *where]) == 0
    assert state(tmp_path / "store") == state("extracted", "falkordb", falkordb_server.uri)


def test_delete_names_unknown_documents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with open_store(tmp_path / "s", "ladybug") as gs:
        gs.import_graph(KnowledgeGraph("k", splits={"train": [Triple("a", "r", "b")]}, entities={"a": Entity("a")}))
    capsys.readouterr()
    assert main(["kg", "delete", "-d", "nope.txt", "--store", str(tmp_path / "s")]) == 1
    assert "no document 'nope.txt'" in capsys.readouterr().err


def test_mentions_link_to_entities_by_label_or_id_and_new_names_become_entities() -> None:
    linker = MentionLinker([Entity("Q312", "Apple Inc."), Entity("new_york_city", "NYC")])

    def m(text: str) -> TextMention:
        return TextMention(text, "Org", 0, len(text), 1.0, 0)

    assert linker.link(m("apple inc")).entity == "Q312" and not linker.link(m("Apple  Inc.")).new
    assert linker.link(m("New York City")).entity == "new_york_city"  # the id read with spaces
    found = linker.link(m("Cupertino"))
    assert (found.entity, found.new) == ("cupertino", True)
    assert linker.link(m("...")) is None


def test_kge_and_kgc_train_on_an_extracted_store(
    conll04_run: tuple[Path, dict], corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = conll04_run
    store = tmp_path / "store"
    extract(corpus, run, store, capsys=capsys)
    config = tmp_path / "kge.toml"
    config.write_text(
        f'[task]\nname = "link-prediction"\ndataset = "{store}"\nmodel = "distmult"\ndim = 16\n'
        'training = "1-n"\nvalid_split = ""\ntest_split = ""\n'
        "[train]\nepochs = 40\nlr = 0.05\nbatch_size = 16\nthreads = 1\ntensorboard = false\n",
        encoding="utf-8",
    )
    assert main(["kge", "train", str(config), "--out", str(tmp_path / "kge")]) == 0
    with open_store(store, "ladybug", read_only=True) as gs:
        fact = next(iter(gs.iter_facts()))
    capsys.readouterr()
    args = ["kge", "predict", "-m", str(tmp_path / "kge"), "--head", fact.head, "-r", fact.relation]
    assert main([*args, "--store", str(store), "--top", "3", "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)["answers"]
    top = answers[0]
    assert top["known"], answers  # a training fact ranks first after 40 epochs of 1-N
    assert top["evidence"] and all(e["head"] == fact.head for e in top["evidence"])

    kgc = ["kgc", "train", str(ROOT / "configs/extract/kgc-extracted.toml"), "--dataset", str(store)]
    assert main([*kgc, "--max-steps", "3", "--out", str(tmp_path / "kgc")]) == 0
    assert (tmp_path / "kgc" / "model").is_dir()


def test_bad_documents_fail_with_file_and_line_or_are_skipped(
    conll04_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, _ = conll04_run
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.txt").write_text("John Smith works for IBM in New York .", encoding="utf-8")
    (docs / "bad.jsonl").write_text('{"id": "x", "text": "Fine ."}\n{"text": "no id"}\n', encoding="utf-8")
    store = tmp_path / "store"
    capsys.readouterr()
    assert main(["extract", str(docs), "-m", str(run), "--store", str(store)]) == 1
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "Traceback" not in err
    assert not store.exists()  # nothing was written
    summary = extract(docs, run, store, "--skip-bad", capsys=capsys)
    assert (summary["documents"], summary["skipped"]) == (2, 1)
    assert "bad.jsonl:2" in summary["skipped_documents"][0]
