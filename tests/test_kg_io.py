"""Knowledge-graph readers and writers: bad input, real data sets, round trips, streaming."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import kelm.kg.io.rdf_syntax as rdf_syntax
from kelm.errors import DataError
from kelm.kg.io import (
    ReadReport,
    iter_chunks,
    iter_delimited,
    iter_rdf_chunks,
    iter_triples,
    load_kg,
    read_entity_text,
    read_entity_types,
    read_json_text,
    read_relation_text,
    read_type_labels,
    write_ntriples,
    write_tsv,
)
from kelm.kg.io.rdf_syntax import TurtleStatementSplitter
from kelm.kg.model import Entity, KnowledgeGraph, Relation, Triple

RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def keys(triples: list[Triple]) -> Counter[tuple[str, str, str]]:
    return Counter(t.key() for t in triples)


def assert_same_graph(a: KnowledgeGraph, b: KnowledgeGraph) -> None:
    assert a.entities == b.entities
    assert a.relations == b.relations
    assert {s: keys(ts) for s, ts in a.splits.items() if ts} == {s: keys(ts) for s, ts in b.splits.items() if ts}


@contextlib.contextmanager
def raises_at(path: Path, line: int | None, *fragments: str) -> Iterator[None]:
    """Expect a DataError naming ``path`` (and ``line``) whose message holds ``fragments``."""
    with pytest.raises(DataError) as info:
        yield
    err = info.value
    where = str(path) if line is None else f"{path}:{line}:"
    assert where in str(err), str(err)
    assert (err.path, err.line) == (str(path), line), str(err)
    for fragment in fragments:
        assert fragment in str(err), str(err)


# -- bad input ---------------------------------------------------------------------------


def test_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    f = write(tmp_path / "train.tsv", "a\tr\tb\nc\tr\td\te\n")
    with raises_at(f, 2, "expected 3 columns, found 4"):
        list(iter_triples(f))
    f = write(tmp_path / "two.tsv", "a\tr\tb\n\nc\td\n")
    with raises_at(f, 3, "expected 3 columns, found 2"):
        list(iter_triples(f))


def test_empty_field_is_malformed_but_blank_lines_are_ignored(tmp_path: Path) -> None:
    f = write(tmp_path / "t.tsv", "a\tr\tb\r\n\r\n   \nc\t\td\n")
    with raises_at(f, 4, "empty relation field"):
        list(iter_triples(f))
    ok = write(tmp_path / "ok.tsv", "\na\tr\tb\r\n\n\nc\tr\td\n\n")
    assert [t.key() for t in iter_triples(ok)] == [("a", "r", "b"), ("c", "r", "d")]


def test_invalid_utf8_reports_its_line(tmp_path: Path) -> None:
    f = write(tmp_path / "t.tsv", b"a\tr\tb\nc\tr\td\n\xff\xfe\tr\tx\n")
    with raises_at(f, 3, "invalid UTF-8"):
        list(iter_triples(f))


def test_empty_file_and_missing_file(tmp_path: Path) -> None:
    empty = write(tmp_path / "train.tsv", "\n\n")
    with raises_at(empty, None, "no triples"):
        list(iter_triples(empty))
    with raises_at(empty, None, "no triples"):
        load_kg(tmp_path)
    missing = tmp_path / "nope.tsv"
    with raises_at(missing, None, "not found"):
        iter_triples(missing)
    with raises_at(missing, None, "not found"):
        load_kg(missing)
    with raises_at(tmp_path / "x.json", None, "unsupported file type"):
        iter_triples(write(tmp_path / "x.json", "{}"))


def test_folder_without_train_or_with_two_train_files(tmp_path: Path) -> None:
    write(tmp_path / "a" / "valid.tsv", "a\tr\tb\n")
    with raises_at(tmp_path / "a", None, "no train split"):
        load_kg(tmp_path / "a")
    write(tmp_path / "b" / "train.tsv", "a\tr\tb\n")
    write(tmp_path / "b" / "train.txt", "a\tr\tb\n")
    with raises_at(tmp_path / "b", None, "two files for the train split"):
        load_kg(tmp_path / "b")


def test_unseen_entity_and_relation_in_valid_and_test(tmp_path: Path) -> None:
    write(tmp_path / "train.tsv", "a\tr\tb\nb\ts\tc\n")
    dev = write(tmp_path / "dev.tsv", "a\ts\tc\nc\tr\tzed\n")
    with raises_at(dev, 2, "entity 'zed'", "train"):
        load_kg(tmp_path)
    write(tmp_path / "dev.tsv", "a\ts\tc\n")
    test = write(tmp_path / "test.txt", "a\tr\tb\n\na\tq\tb\n")
    with raises_at(test, 3, "relation 'q'"):
        load_kg(tmp_path)


def test_skip_bad_counts_instead_of_raising(tmp_path: Path) -> None:
    train = write(tmp_path / "train.tsv", b"a\tr\tb\nbroken line\nb\tr\tc\n\xc3\x28\tr\tc\nc\t\ta\n")
    valid = write(tmp_path / "valid.tsv", "a\tr\tc\na\tr\tnew\nb\tnew_rel\tc\n")
    kg, report = load_kg(tmp_path, skip_bad=True)
    assert kg.split_sizes() == {"train": 2, "valid": 1}
    assert report.skipped == {str(train): 3, str(valid): 2}
    assert report.total_skipped == 5
    assert any("2 triples" in w and "not in train" in w for w in report.warnings)
    assert "new" not in kg.entities and "new_rel" not in kg.relations
    only_bad = write(tmp_path / "bad" / "x.tsv", "oops\nstill bad\n")
    with raises_at(only_bad, None, "no triples", "2 bad lines skipped"):
        list(iter_triples(only_bad, skip_bad=True))


def test_csv_quoting_and_explicit_delimiter(tmp_path: Path) -> None:
    f = write(tmp_path / "t.csv", 'head,rel,tail\n"Smith, J.",wrote,"Book ""One"""\n')
    assert [t.key() for t in iter_triples(f)][1] == ("Smith, J.", "wrote", 'Book "One"')
    bad = write(tmp_path / "bad.csv", 'a,r,"open\n')
    with raises_at(bad, 1, "CSV"):
        list(iter_triples(bad))
    semi = write(tmp_path / "t.txt", "a;r;b\n")
    assert [t.key() for t in iter_delimited(semi, delimiter=";")] == [("a", "r", "b")]


def test_text_file_errors_name_line(tmp_path: Path) -> None:
    write(tmp_path / "train.tsv", "a\tr\tb\n")
    labels = write(tmp_path / "entity2text.txt", "a\tAlpha\nb Beta\n")
    with raises_at(labels, 2, "expected id<TAB>text"):
        load_kg(tmp_path)
    report = ReadReport()
    assert read_entity_text(tmp_path, skip_bad=True, report=report)["a"].label == "Alpha"
    assert report.skipped == {str(labels): 1}
    labels.unlink()
    rels = write(tmp_path / "relations.json", '{"r": {"label": "are"},\n "s": {"label": 5}\n')
    with raises_at(rels, 3, "invalid JSON"):
        load_kg(tmp_path)
    write(rels, '{"r": {"label": "are"}, "s": {"label": 5}}')
    with raises_at(rels, None, "entry 's'"):
        load_kg(tmp_path)
    assert read_json_text(rels, skip_bad=True) == {"r": ("are", None)}


def test_rdf_syntax_errors_name_line(tmp_path: Path) -> None:
    nt = write(tmp_path / "g.nt", "<urn:a> <urn:r> <urn:b> .\n# comment\n<urn:a> <urn:r> .\n")
    with raises_at(nt, 3, "N-Triples syntax error"):
        list(iter_triples(nt))
    ttl = write(
        tmp_path / "g.ttl",
        '@prefix ex: <http://ex.org/> .\nex:a ex:r ex:b .\nex:c ex:r """x\ny""" ;\n  ex:s ex:d ex:e .\n',
    )
    with raises_at(ttl, 5, "Turtle syntax error"):
        list(iter_triples(ttl))
    report = ReadReport()
    assert [t.key() for t in iter_triples(ttl, skip_bad=True, report=report)] == [
        ("http://ex.org/a", "http://ex.org/r", "http://ex.org/b")
    ]
    assert report.skipped == {str(ttl): 1}


# -- real data sets ---------------------------------------------------------------------


def test_umls_counts_and_text(data_dir: Path) -> None:
    kg, report = load_kg(data_dir / "kg" / "umls")
    assert (len(kg.entities), len(kg.relations)) == (135, 46)
    assert kg.split_sizes() == {"train": 5216, "valid": 652, "test": 661}
    assert report.total_skipped == 0 and report.warnings == []
    virus = kg.entities["virus"]
    assert virus.label == "virus" and virus.description and virus.description.startswith("A virus is")
    assert kg.relations["derivative_of"].label == "derivative of"
    assert all(e.label for e in kg.entities.values())


def test_nations_loads(data_dir: Path) -> None:
    kg, report = load_kg(data_dir / "kg" / "nations")
    assert kg.name == "nations" and len(kg.entities) == 14
    assert set(kg.split_sizes()) == {"train", "valid", "test"} and kg.split_sizes()["train"] > 1000
    assert report.warnings == ["14 entities have no label; using their id"]
    assert kg.entities["usa"].text() == "usa"


def test_codex_s_with_relation_text_and_types(data_dir: Path) -> None:
    types_dir = data_dir / "kg" / "codex-types"
    kg, _ = load_kg(data_dir / "kg" / "codex-s", types_dir=types_dir)
    assert len(kg.relations) == 42 and all(r.label for r in kg.relations.values())
    assert kg.relations["P509"].label == "cause of death"
    typed = [e for e in kg.entities.values() if e.types]
    assert len(typed) > 0.9 * len(kg.entities)
    labels = read_type_labels(types_dir)
    assert labels["Q28640"] == "profession"
    assert all(t in labels for e in typed[:50] for t in e.types)
    assert read_entity_types(types_dir)["Q33999"] == ("Q28640", "Q483501")
    assert read_relation_text(data_dir / "kg" / "codex-s")["P509"].description


# -- round trips ------------------------------------------------------------------------


def sample_graph() -> KnowledgeGraph:
    kg = KnowledgeGraph(name="sample")
    kg.add_triples("train", [Triple("a", "likes", "b"), Triple("b", "likes", "c"), Triple("a", "likes", "b")])
    kg.add_triples("train", [Triple("c", "part of", "a")])
    kg.add_triples("valid", [Triple("a", "part of", "c")])
    kg.add_triples("test", [Triple("c", "likes", "a")])
    kg.add_triples("extra", [Triple("b", "part of", "b")])
    kg.entities["a"] = Entity("a", "Alpha", "First\tletter, with a tab", ("letter", "greek"))
    kg.entities["b"] = Entity("b", "Beta")
    kg.entities["lonely"] = Entity("lonely", None, "an entity in no triple")
    kg.relations["likes"] = Relation("likes", "likes", "is fond of")
    kg.relations["unused"] = Relation("unused")
    return kg


def test_tsv_round_trip_is_exact(tmp_path: Path) -> None:
    kg = sample_graph()
    written = write_tsv(kg, tmp_path / "out")
    assert {p.name for p in written} >= {"train.tsv", "valid.tsv", "test.tsv", "extra.tsv", "entity2text.txt"}
    back, report = load_kg(tmp_path / "out", name="sample")
    # the repeated train triple is written twice and read back once, counted as a duplicate
    assert report.duplicates == {str(tmp_path / "out" / "train.tsv"): 1}
    kg.splits["train"] = list(dict.fromkeys(kg.splits["train"]))
    assert_same_graph(kg, back)
    assert not list((tmp_path / "out").glob(".*"))


def test_tsv_round_trip_of_umls(data_dir: Path, tmp_path: Path) -> None:
    kg, _ = load_kg(data_dir / "kg" / "umls")
    write_tsv(kg, tmp_path)
    back, _ = load_kg(tmp_path)
    assert_same_graph(kg, back)


def test_write_tsv_rejects_what_would_not_read_back(tmp_path: Path) -> None:
    kg = KnowledgeGraph()
    kg.add_triples("train", [Triple("a\tb", "r", "c")])
    with pytest.raises(DataError, match="cannot be written"):
        write_tsv(kg, tmp_path)
    assert list(tmp_path.iterdir()) == []
    kg = KnowledgeGraph()
    kg.add_triples("dev", [Triple("a", "r", "c")])
    with pytest.raises(DataError, match="split name 'dev'"):
        write_tsv(kg, tmp_path)
    write(tmp_path / "test.txt", "a\tr\tc\n")
    with pytest.raises(DataError, match="test.txt would be read back as the test split"):
        write_tsv(sample_graph(), tmp_path)


def rdf_graph() -> KnowledgeGraph:
    kg = KnowledgeGraph(name="rdf")
    kg.add_triples(
        "train",
        [
            Triple("alice smith", "knows", "Bob/ünïcode"),
            Triple("http://example.org/carol", "http://example.org/rel#x", "_:b0"),
            Triple("urn:kelm:looks-like-base", "knows", "alice smith"),
            Triple("alice smith", RDF_TYPE, "Person"),
            Triple("alice smith", "knows", "alice smith"),
            Triple("alice smith", "knows", "alice smith"),
        ],
    )
    kg.entities["alice smith"] = Entity("alice smith", 'Alice "Al"', "line one\nline two \\ end", ("Person",))
    kg.entities["_:b0"] = Entity("_:b0", "a blank node")
    kg.relations["knows"] = Relation("knows", "knows", "is acquainted with")
    kg.relations["declared only"] = Relation("declared only", "declared")
    return kg


def test_ntriples_round_trip_is_exact(tmp_path: Path) -> None:
    kg = rdf_graph()
    path = tmp_path / "g.nt"
    lines = write_ntriples(kg, path)
    assert lines == len(path.read_text(encoding="utf-8").splitlines())
    text = path.read_text(encoding="utf-8")
    assert "<urn:kelm:alice%20smith>" in text and "<http://example.org/carol>" in text and "_:b0 " in text
    back, report = load_kg(path, name="rdf")
    assert report.duplicates == {str(path): 1}  # the repeated statement is stored once
    kg.splits["train"] = list(dict.fromkeys(kg.splits["train"]))
    assert_same_graph(kg, back)
    assert report.literals_skipped == 0
    raw, _ = load_kg(path, base_iri=None)
    assert "urn:kelm:alice%20smith" in raw.entities


def test_ntriples_of_plain_triples_and_atomic_failure(tmp_path: Path) -> None:
    path = tmp_path / "t.nt"
    assert write_ntriples([Triple("a", "r", "b")], path, base_iri="http://ex.org/") == 1
    assert path.read_text() == "<http://ex.org/a> <http://ex.org/r> <http://ex.org/b> .\n"

    def failing() -> Iterator[Triple]:
        yield Triple("x", "r", "y")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_ntriples(failing(), path)
    assert path.read_text() == "<http://ex.org/a> <http://ex.org/r> <http://ex.org/b> .\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.nt"]


# -- RDF reading ------------------------------------------------------------------------

TURTLE = '''# A hand-written graph. Dots in comments . are fine.
@prefix ex: <http://ex.org/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
PREFIX schema: <http://schema.org/>
@base <http://base.org/> .

ex:alice a ex:Person ;
    rdfs:label "Alicia"@de , "Alice"@en ;
    rdfs:comment """A person.
She writes "quoted" text; ends with a dot.""" ;
    ex:age 42 ;
    ex:knows _:friend , [ rdfs:label 'anon' ; ex:likes ex:tea ] .
_:friend schema:name "Friend" .
_:friend ex:knows <bob> . ex:tea ex:pairs ( ex:milk ) .
ex:knows rdfs:label "knows" .
ex:v ex:score 1.5 ; ex:next ex:w.
'''


def test_turtle_streaming_maps_text_types_and_blank_nodes(tmp_path: Path) -> None:
    path = write(tmp_path / "g.ttl", TURTLE)
    report = ReadReport()
    chunks = list(iter_rdf_chunks(path, chunk_size=2, report=report))
    assert len(chunks) > 2 and all(len(c.triples) <= 2 for c in chunks)
    kg, _ = load_kg(path)
    ex = "http://ex.org/"
    alice = kg.entities[ex + "alice"]
    assert alice.label == "Alice" and alice.types == (ex + "Person",)
    assert alice.description == 'A person.\nShe writes "quoted" text; ends with a dot.'
    assert kg.entities["_:friend"].label == "Friend"
    assert kg.relations[ex + "knows"].label == "knows" and ex + "knows" not in kg.entities
    heads = keys(kg.splits["train"])
    assert heads[(ex + "alice", RDF_TYPE, ex + "Person")] == 1
    assert heads[("_:friend", ex + "knows", "http://base.org/bob")] == 1
    assert heads[(ex + "alice", ex + "knows", "_:friend")] == 1
    anon = [t.tail for t in kg.splits["train"] if t.relation == ex + "knows" and t.tail.startswith("_:n")]
    assert len(anon) == 1 and kg.entities[anon[0]].label == "anon"
    assert heads[(ex + "v", ex + "next", ex + "w")] == 1
    assert report.literals_skipped == 2  # ex:age 42 and ex:score 1.5


def test_turtle_splitter_keeps_dots_inside_names_numbers_and_strings() -> None:
    splitter = TurtleStatementSplitter()
    lines = [
        'ex:a ex:p ex:b.c , 1.5 , "x. y" ; ex:q <http://x.org/a.b> .  ex:c ex:p [ ex:q ex:r ] .',
        "ex:e ex:p ex:x\\. . # done.",
        "ex:d",
    ]
    blocks = [b for i, line in enumerate(lines, 1) for b in splitter.feed(i, line)]
    assert blocks == [
        (1, 'ex:a ex:p ex:b.c , 1.5 , "x. y" ; ex:q <http://x.org/a.b> .'),
        (1, "ex:c ex:p [ ex:q ex:r ] ."),
        (2, "ex:e ex:p ex:x\\. ."),
    ]
    assert splitter.finish() == (3, "ex:d\n")


def test_ntriples_language_preference_and_literals(tmp_path: Path) -> None:
    path = write(
        tmp_path / "g.nt",
        '<urn:x:a> <http://www.w3.org/2000/01/rdf-schema#label> "A-fr"@fr .\n'
        '<urn:x:a> <http://www.w3.org/2000/01/rdf-schema#label> "A"@en .\n'
        '<urn:x:a> <http://www.w3.org/2000/01/rdf-schema#label> "A-de"@de .\n'
        '<urn:x:a> <http://schema.org/description> "about a" .\n'
        '<urn:x:a> <urn:x:height> "3"^^<http://www.w3.org/2001/XMLSchema#int> .\n'
        "<urn:x:a> <urn:x:r> _:n1 .\n",
    )
    kg, report = load_kg(path)
    assert kg.entities["urn:x:a"] == Entity("urn:x:a", "A", "about a")
    assert keys(kg.splits["train"]) == Counter({("urn:x:a", "urn:x:r", "_:n1"): 1})
    assert report.literals_skipped == 1


def test_iter_chunks_streams_a_large_ntriples_file_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 200_000
    path = tmp_path / "big.nt"
    body = "".join(f"<urn:kelm:e{i}> <urn:kelm:r{i % 7}> <urn:kelm:e{i + 1}> .\n" for i in range(n))
    write(path, body + "this line is not N-Triples\n")
    consumed = 0
    real_iter_lines = rdf_syntax.iter_lines

    def counting(*args: object, **kwargs: object) -> Iterator[tuple[int, str]]:
        nonlocal consumed
        for item in real_iter_lines(*args, **kwargs):  # type: ignore[arg-type]
            consumed += 1
            yield item

    monkeypatch.setattr(rdf_syntax, "iter_lines", counting)
    chunks = iter_chunks(path, chunk_size=1_000)
    first = next(chunks)
    assert len(first.triples) == 1_000 and first.split == "train"
    assert first.triples[0] == Triple("e0", "r0", "e1")
    assert consumed <= 1_001
    second = next(chunks)
    assert second.triples[0] == Triple("e1000", "r6", "e1001") and consumed <= 2_001


def test_iter_chunks_for_tsv_and_folders(tmp_path: Path) -> None:
    write(tmp_path / "train.tsv", "".join(f"e{i}\tr\te{i + 1}\n" for i in range(10)))
    write(tmp_path / "test.tsv", "e1\tr\te2\n")
    write(tmp_path / "entity2text.txt", "e1\tone\nunknown\tnobody\n")
    chunks = list(iter_chunks(tmp_path / "train.tsv", chunk_size=4, split="extra"))
    assert [len(c.triples) for c in chunks] == [4, 4, 2] and {c.split for c in chunks} == {"extra"}
    chunks = list(iter_chunks(tmp_path, chunk_size=4))
    assert [(c.split, len(c.triples)) for c in chunks if c.triples] == [
        ("train", 4),
        ("train", 4),
        ("train", 2),
        ("test", 1),
    ]
    assert [e for c in chunks for e in c.entities] == [Entity("e1", "one")]
    with pytest.raises(ValueError):
        iter_chunks(tmp_path, chunk_size=0)
