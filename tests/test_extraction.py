"""Joint entity and relation extraction: span layout and pooling, decoding, strict scoring, text
segmentation, training on CoNLL04 through the engine, and the exported `Extractor`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from kelm.errors import DataError
from kelm.extract.decoding import decode_mentions, strict_counts
from kelm.extract.extractor import Extractor
from kelm.extract.spans import between_maxima, span_bounds, span_index, span_maxima, word_maxima
from kelm.extract.text import sentences, words
from kelm.tasks import build_task


def test_span_layout_and_maxima_match_brute_force() -> None:
    torch.manual_seed(0)
    B, N, H, W = 3, 7, 5, 4
    words_BNH = torch.randn(B, N, H)
    starts, ends = span_bounds(N, W)
    spans = span_maxima(words_BNH, W)
    assert spans.shape == (B, len(starts), H) == (B, 7 + 6 + 5 + 4, H)
    for k, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        assert span_index(s, e, N, W) == k
        torch.testing.assert_close(spans[:, k], words_BNH[:, s:e].amax(1))
    assert span_index(0, W + 1, N, W) is None and span_index(5, 8, N, W) is None


def test_word_and_between_maxima() -> None:
    torch.manual_seed(1)
    tokens = torch.randn(2, 6, 3)
    word_of = torch.tensor([[-1, 0, 0, 1, 2, -1], [-1, 0, 1, 1, -1, -1]])
    got = word_maxima(tokens, word_of, 3)
    torch.testing.assert_close(got[0, 0], tokens[0, 1:3].amax(0))
    torch.testing.assert_close(got[1, 1], tokens[1, 2:4].amax(0))
    assert torch.equal(got[1, 2], torch.zeros(3))  # sentence 1 has two words
    ctx = between_maxima(got, torch.tensor([0, 0]), torch.tensor([1, 2]), torch.tensor([3, 2]))
    torch.testing.assert_close(ctx[0], got[0, 1:3].amax(0))
    assert torch.equal(ctx[1], torch.zeros(3))  # adjacent spans: nothing between them
    many = torch.randn(2, 37, 3)
    b, lo, hi = torch.randint(0, 2, (300,)), torch.randint(0, 37, (300,)), torch.randint(0, 38, (300,))
    got = between_maxima(many, b, lo, hi)  # a sparse table of maxima: exact for every range
    for p in range(300):
        want = many[b[p], lo[p] : hi[p]].amax(0) if hi[p] > lo[p] else torch.zeros(3)
        assert torch.equal(got[p], want)


def test_decoding_takes_confident_spans_without_overlap_and_scores_strictly() -> None:
    starts, ends = span_bounds(4, 2)  # spans: [0,1) [1,2) [2,3) [3,4) [0,2) [1,3) [2,4)
    logits = torch.full((7, 3), -5.0)
    logits[:, 0] = 0.0  # "no entity" by default
    logits[4, 1] = 4.0  # [0,2) type A, confident
    logits[1, 2] = 2.0  # [1,2) type B overlaps it, less confident: dropped
    logits[3, 2] = 3.0  # [3,4) type B
    mentions, flat = decode_mentions(logits, starts, ends, 4, ["A", "B"])
    assert [m.key() for m in mentions] == [(0, 2, "A"), (3, 4, "B")] and flat == [4, 3]
    tp, pred, gold = strict_counts([[(0, 2, "A"), (2, 3, "B")]], [[m.key() for m in mentions]])
    assert (tp["A"], pred["B"], gold["B"], tp["B"]) == (1, 1, 1, 0)


def test_sentences_and_words_keep_character_offsets() -> None:
    text = "Mr. Smith works for AT&T in Dallas. He met O'Neil on Jan. 5!\n\nA new line"
    sents = sentences(text)
    assert [s.text for s in sents] == [
        "Mr. Smith works for AT&T in Dallas.",
        "He met O'Neil on Jan. 5!",
        "A new line",
    ]
    for s in sents:
        assert text[s.start : s.end] == s.text
        for w in words(s):
            assert text[w.start : w.end] == w.text
    assert [w.text for w in words(sents[0])] == ["Mr", ".", "Smith", "works", "for", "AT&T", "in", "Dallas", "."]


def test_extraction_trains_above_chance_on_conll04(conll04_run: tuple[Path, dict]) -> None:
    _, summary = conll04_run
    test = summary["test"]
    assert {"entity_f1", "relation_f1", "entity_precision", "relation_recall"} <= set(test)
    assert test["entity_f1"] > 0.45, test  # a random span classifier scores about 0.01
    assert test["relation_f1"] >= 0.0


def test_exported_extractor_predicts_as_the_task_does(conll04_run: tuple[Path, dict], data_dir: Path) -> None:
    run, _ = conll04_run
    extractor = Extractor.from_pretrained(run)
    items = json.loads((data_dir / "re/conll04/test.json").read_text(encoding="utf-8"))[:12]
    files = {"train": str(run.parent / "train.json"), "test": str(run.parent / "test.json")}
    task = build_task({"name": "extraction", **files, "span_ends": True, "shape_dim": 8})  # as conftest trains
    from kelm.train.export import load_weights

    model = load_weights(task.build_model(), run / "model").eval()
    batch = task.collate(task.splits["test"][:12])
    want = task.predict_batch(model, batch)
    got = extractor.predict_words([item["tokens"] for item in items])
    assert [[m.key() for m in ms] for ms, _ in got] == [[m.key() for m in ms] for ms, _ in want]
    assert [[r.key() for r in rs] for _, rs in got] == [[r.key() for r in rs] for _, rs in want]
    assert any(ms for ms, _ in got)
    text = " ".join(items[0]["tokens"])
    found = extractor.extract(text)
    for m in found.mentions:
        assert text[m.start : m.end] == m.text and m.type in extractor.settings.entity_types


def test_bad_extraction_data_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "train.json"
    bad.write_text('[{"tokens": ["a", "b"], "entities": [{"type": "X", "start": 1, "end": 5}]}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"train\.json.*item 0: entity span \[1, 5\) outside 2 words"):
        build_task({"name": "extraction", "train": str(bad), "model": "tiny-bert"})
    bad.write_text("[{", encoding="utf-8")
    with pytest.raises(DataError, match="invalid JSON"):
        build_task({"name": "extraction", "train": str(bad), "model": "tiny-bert"})


def test_fresh_heads_get_their_own_learning_rate(data_dir: Path) -> None:
    from kelm.train.trainer import parameter_groups

    train = data_dir / "re" / "conll04" / "train.json"
    task = build_task({"name": "extraction", "train": str(train), "model": "tiny-bert", "head_lr_scale": 20.0})
    model = task.build_model()
    groups = parameter_groups(model, 1e-4, task.lr_scale)
    assert [g["lr"] for g in groups] == [1e-4, pytest.approx(2e-3)]
    heads = {id(p) for m in (model.entity_head, model.relation_head, model.width) for p in m.parameters()}
    assert {id(p) for p in groups[1]["params"]} == heads
    assert len(parameter_groups(model, 1e-4)) == 1


def test_documents_from_text_files_folders_and_jsonl(tmp_path: Path) -> None:
    from kelm.extract.documents import read_documents

    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text("Alpha works for Beta.", encoding="utf-8")
    (tmp_path / "docs" / "sub" / "b.txt").write_text("Gamma lives in Delta.", encoding="utf-8")
    (tmp_path / "docs" / "c.jsonl").write_text(
        '{"id": "c1", "text": "One."}\n\n{"id": 7, "text": "Two."}\n', encoding="utf-8"
    )
    docs = list(read_documents(tmp_path / "docs"))
    assert [(d.id, d.line) for d in docs] == [("a.txt", None), ("c1", 1), ("7", 3), ("sub/b.txt", None)]
    assert [d.id for d in read_documents(tmp_path / "docs" / "sub" / "b.txt")] == ["b.txt"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"id": "x", "text": "ok"}\n{"text": "no id"}\n', r"c\.jsonl:2: expected an object with an 'id'"),
        (b'{"id": "x", "text": "ok"}\n{"id": "x", "text": "again"}\n', r"c\.jsonl:2: document id 'x' occurs twice"),
        (b'{"id": "x", "text": "  "}\n', r"c\.jsonl:1: document 'x' is empty"),
        (b'{"id": "x", "text": "ok"}\n{"id": "y", "text": "\xff"}\n', r"c\.jsonl:2: not UTF-8"),
        (b"{oops\n", r"c\.jsonl:1: invalid JSON"),
    ],
)
def test_bad_documents_name_file_and_line_or_are_skipped(tmp_path: Path, content: bytes, message: str) -> None:
    from kelm.extract.documents import DocumentReport, read_documents

    path = tmp_path / "c.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        list(read_documents(path))
    report = DocumentReport()
    kept = list(read_documents(path, skip_bad=True, report=report))
    assert len(report.skipped) == 1 and report.read == len(kept)


def test_oversized_and_binary_text_files(tmp_path: Path) -> None:
    from kelm.extract.documents import read_documents

    big = tmp_path / "big.txt"
    big.write_text("word " * 100, encoding="utf-8")
    with pytest.raises(DataError, match="500 characters, over the limit of 100"):
        list(read_documents(big, max_chars=100))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"line one\nline \xfe two")
    with pytest.raises(DataError, match=r"bad\.txt:2: not UTF-8"):
        list(read_documents(bad))


def test_long_document_keeps_the_recall_of_its_parts(conll04_run: tuple[Path, dict], data_dir: Path) -> None:
    """A 16,000-character document without a sentence break goes through in windows and finds
    (nearly) every mention that its parts find one by one."""
    run, _ = conll04_run
    extractor = Extractor.from_pretrained(run)
    items = json.loads((data_dir / "re/conll04/dev.json").read_text(encoding="utf-8"))
    parts, gold, doc, k = [], [], "", 0
    while len(doc) < 16_000:
        text = " ".join(items[k]["tokens"])
        offsets, pos = [], len(doc) + (3 if doc else 0)
        for tok in items[k]["tokens"]:
            offsets.append(pos)
            pos += len(tok) + 1
        for e in items[k]["entities"]:
            last = items[k]["tokens"][e["end"] - 1]
            gold.append((offsets[e["start"]], offsets[e["end"] - 1] + len(last), e["type"]))
        doc = f"{doc} ; {text}" if doc else text
        parts.append(text)
        k += 1
    longest = max(len(s.text) for s in extractor.extract(doc).sentences)
    assert len(doc) >= 16_000 and longest > 5_000  # far beyond one window of the encoder
    shift, found_parts = 0, set()
    for text in parts:
        found_parts |= {(m.start + shift, m.end + shift, m.type) for m in extractor.extract(text).mentions}
        shift += len(text) + 3
    found_doc = {(m.start, m.end, m.type) for m in extractor.extract(doc).mentions}
    recall_parts = len(found_parts & set(gold)) / len(gold)
    recall_doc = len(found_doc & set(gold)) / len(gold)
    assert recall_parts > 0.3
    assert recall_doc >= 0.95 * recall_parts, (recall_doc, recall_parts)


def test_cli_predict_prints_mentions_and_relations(
    conll04_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kelm.cli import main

    run, _ = conll04_run
    lines = tmp_path / "in.txt"
    lines.write_text("John Smith works for IBM in New York .\n\nMary lives in Paris .\n", encoding="utf-8")
    assert main(["predict", "-m", str(run), "--json", str(lines)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["John Smith works for IBM in New York .", "Mary lives in Paris ."]
    for row in rows:
        for m in row["mentions"]:
            assert row["text"][m["start"] : m["end"]] == m["text"] and 0 < m["score"] <= 1


def test_negative_spans_are_the_same_at_every_world_size(data_dir: Path) -> None:
    """The non-entity spans a training sentence keeps depend on the sentence, not on its batch
    neighbours or its rank: one process and two draw the same ones."""
    from kelm.train.data import BatchRandom

    train = data_dir / "re" / "conll04" / "train.json"
    task = build_task({"name": "extraction", "train": str(train), "model": "tiny-bert", "negative_spans": 20})
    samples = [task.train_data()[i] for i in range(4)]

    def kept(batch: dict, b: int) -> set[tuple[int, int]]:
        starts, ends = span_bounds(int(batch["n_words"].max()), task.cfg.max_width)
        return {(int(starts[k]), int(ends[k])) for k in torch.nonzero(batch["span_labels"][b] == 0).flatten()}

    def rng(rank: int, world: int) -> BatchRandom:
        return BatchRandom(torch.Generator().manual_seed(7), 4, rank, world)

    one = task.collate(samples, rng(0, 1))
    for rank in (0, 1):
        two = task.collate(samples[rank::2], rng(rank, 2))
        for b, i in enumerate(range(rank, 4, 2)):
            assert kept(two, b) == kept(one, i) and len(kept(one, i)) == 20


def test_word_shapes_tell_capitalisation_apart() -> None:
    from kelm.extract.inputs import SHAPES, word_shape

    words = ["The", "U.S.", "sent", "J.", "McDonald", "and", "IBM", "3", ",", "to", "paris"]
    got = [SHAPES[word_shape(w, k == 0)] for k, w in enumerate(words)]
    assert got == ["title-first", "upper", "lower", "initial", "mixed", "lower", "upper", "digit", "punct", "lower",
                   "lower"]  # fmt: skip
    assert SHAPES[word_shape("Paris", False)] == "title"


def test_span_end_features_reach_the_entity_head_and_are_saved(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    from kelm.extract.extractor import read_settings, write_settings
    from kelm.extract.model import ExtractorSettings, SpanRelationExtractor

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    settings = ExtractorSettings(
        ("Peop", "Loc"), ("Live_In",), max_width=3, width_dim=4, dropout=0.0, span_ends=True, shape_dim=5
    )
    model = SpanRelationExtractor(BertModel(config), settings).eval()
    assert model.entity_head.in_features == 3 * (16 + 5) + 16 + 4
    assert model.relation_head.in_features == 3 * (16 + 5) + 2 * 4
    batch = {
        "input_ids": torch.tensor([[1, 5, 6, 7, 2]]),
        "attention_mask": torch.ones(1, 5, dtype=torch.long),
        "word_of_token": torch.tensor([[-1, 0, 1, 2, -1]]),
        "n_words": torch.tensor([3]),
        "word_shapes": torch.tensor([[3, 1, 2]]),
    }
    enc, logits = model("spans", **batch)
    assert torch.equal(enc.words_BNH[0, :, 16:], model.shape.weight[[3, 1, 2]])  # each word's shape joins it
    assert logits.shape == (1, 3 + 2 + 1, 3)
    # the span "words 0..1" changes when only its last word's vector changes, beyond the maximum
    words = enc.words_BNH.clone()
    words[0, 1] = words[0, 1] - 100.0  # lowers word 1 below word 0 everywhere: the maximum is word 0's
    changed = model.entity_logits(dataclasses.replace(enc, words_BNH=words))
    span = next(k for k in range(6) if (int(enc.starts_S[k]), int(enc.ends_S[k])) == (0, 2))
    assert not torch.allclose(changed[0, span], logits[0, span])
    write_settings(tmp_path, settings, 0.4, 128)
    assert read_settings(tmp_path) == (settings, 0.4, 128)


def test_served_extraction_equals_the_offline_one(conll04_run: tuple[Path, dict]) -> None:
    from serving import TOKEN, Server

    from kelm.app.serve import ServeSettings, create_app, load_service

    run, _ = conll04_run
    text = "John Smith works for IBM in New York. Mary Jones lives in Paris."
    want = Extractor.from_pretrained(run).extract(text)
    with Server(create_app([load_service(run)], None, ServeSettings(TOKEN))) as server:
        status, body, _ = server.call("POST", "/v1/extract", {"text": text})
    assert status == 200
    assert [(m["start"], m["end"], m["type"]) for m in body["mentions"]] == [
        (m.start, m.end, m.type) for m in want.mentions
    ]
    got = [(r["head"]["start"], r["tail"]["start"], r["relation"]) for r in body["relations"]]
    assert got == [(r.head.start, r.tail.start, r.type) for r in want.relations]
