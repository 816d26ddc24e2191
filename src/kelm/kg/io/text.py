"""Entity and relation text files: ``entity2text.txt``, ``entity2textlong.txt``,
``relation2text.txt`` (id, tab, text), ``entities.txt`` / ``relations.txt`` (one id per line),
and CoDEx-style ``entities.json`` / ``relations.json``."""

from __future__ import annotations

from pathlib import Path

from kelm.kg.io.codex import read_json_text
from kelm.kg.io.lines import iter_lines, reject
from kelm.kg.io.report import ReadReport
from kelm.kg.model import Entity, Relation, merge_entity

ENTITY_IDS = "entities.txt"
ENTITY_LABELS = "entity2text.txt"
ENTITY_DESCRIPTIONS = "entity2textlong.txt"
ENTITY_JSON = "entities.json"
RELATION_IDS = "relations.txt"
RELATION_LABELS = "relation2text.txt"
RELATION_DESCRIPTIONS = "relation2textlong.txt"
RELATION_JSON = "relations.json"

#: File stems in a data-set folder that hold vocabularies or text, never triples.
TEXT_STEMS = frozenset(
    Path(name).stem
    for name in (
        ENTITY_IDS,
        ENTITY_LABELS,
        ENTITY_DESCRIPTIONS,
        RELATION_IDS,
        RELATION_LABELS,
        RELATION_DESCRIPTIONS,
    )
)


def read_ids(path: str | Path, *, skip_bad: bool = False, report: ReadReport | None = None) -> list[str]:
    """The ids of a one-id-per-line file, in order, without duplicates; blank lines are ignored."""
    report = report if report is not None else ReadReport()
    ids: dict[str, None] = {}
    for number, text in iter_lines(path, skip_bad=skip_bad, report=report):
        value = text.strip()
        if not value:
            continue
        if "\t" in value:
            reject("expected one id per line, found a tab", path, number, skip_bad=skip_bad, report=report)
            continue
        ids[value] = None
    return list(ids)


def read_id_text(path: str | Path, *, skip_bad: bool = False, report: ReadReport | None = None) -> dict[str, str]:
    """``id -> text`` from lines ``id<TAB>text``; the text may itself contain tabs.

    Blank lines and lines with an empty text are ignored; a line without a tab or with an
    empty id is malformed. A later line for the same id wins.
    """
    report = report if report is not None else ReadReport()
    texts: dict[str, str] = {}
    for number, line in iter_lines(path, skip_bad=skip_bad, report=report):
        if not line.strip():
            continue
        key, tab, text = line.partition("\t")
        key = key.strip()
        if not tab or not key:
            problem = "expected id<TAB>text" if not tab else "empty id"
            reject(problem, path, number, skip_bad=skip_bad, report=report)
            continue
        if text.strip():
            texts[key] = text
    return texts


def read_entity_text(
    folder: str | Path, *, skip_bad: bool = False, report: ReadReport | None = None
) -> dict[str, Entity]:
    """Entities of a data-set folder's vocabulary and text files (whichever exist).

    ``entities.txt`` lists ids; ``entity2text.txt`` gives labels, ``entity2textlong.txt``
    descriptions, ``entities.json`` both. Files that are absent are skipped.
    """
    folder = Path(folder)
    report = report if report is not None else ReadReport()
    entities: dict[str, Entity] = {}
    if (folder / ENTITY_IDS).is_file():
        for eid in read_ids(folder / ENTITY_IDS, skip_bad=skip_bad, report=report):
            entities[eid] = Entity(eid)
    if (folder / ENTITY_LABELS).is_file():
        for eid, label in read_id_text(folder / ENTITY_LABELS, skip_bad=skip_bad, report=report).items():
            merge_entity(entities, Entity(eid, label=label))
    if (folder / ENTITY_DESCRIPTIONS).is_file():
        texts = read_id_text(folder / ENTITY_DESCRIPTIONS, skip_bad=skip_bad, report=report)
        for eid, description in texts.items():
            merge_entity(entities, Entity(eid, description=description))
    if (folder / ENTITY_JSON).is_file():
        texts = read_json_text(folder / ENTITY_JSON, skip_bad=skip_bad, report=report)
        for eid, (label, description) in texts.items():
            merge_entity(entities, Entity(eid, label, description))
    return entities


def read_relation_text(
    folder: str | Path, *, skip_bad: bool = False, report: ReadReport | None = None
) -> dict[str, Relation]:
    """Relations of a data-set folder: ``relations.txt`` ids, ``relation2text.txt`` labels,
    ``relation2textlong.txt`` descriptions and ``relations.json`` (CoDEx), whichever exist."""
    folder = Path(folder)
    report = report if report is not None else ReadReport()
    relations: dict[str, Relation] = {}

    def merge(rid: str, label: str | None = None, description: str | None = None) -> None:
        old = relations.get(rid) or Relation(rid)
        relations[rid] = Relation(rid, label or old.label, description or old.description)

    if (folder / RELATION_IDS).is_file():
        for rid in read_ids(folder / RELATION_IDS, skip_bad=skip_bad, report=report):
            merge(rid)
    if (folder / RELATION_LABELS).is_file():
        for rid, label in read_id_text(folder / RELATION_LABELS, skip_bad=skip_bad, report=report).items():
            merge(rid, label=label)
    if (folder / RELATION_DESCRIPTIONS).is_file():
        texts = read_id_text(folder / RELATION_DESCRIPTIONS, skip_bad=skip_bad, report=report)
        for rid, description in texts.items():
            merge(rid, description=description)
    if (folder / RELATION_JSON).is_file():
        texts = read_json_text(folder / RELATION_JSON, skip_bad=skip_bad, report=report)
        for rid, (label, description) in texts.items():
            merge(rid, label, description)
    return relations
