"""Vocabulary files of a model folder: ``index<TAB>id<TAB>label`` lines for entities and relations."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kelm.errors import DataError

ENTITIES_FILE = "entities.tsv"
RELATIONS_FILE = "relations.tsv"


def _clean(text: str | None) -> str:
    return " ".join((text or "").split())


def vocab_tsv(items: list[tuple[str, str | None]]) -> str:
    """``index<TAB>id<TAB>label`` lines under a header; an entity without a label repeats its id."""
    lines = ["index\tid\tlabel"] + [
        f"{i}\t{_clean(k)}\t{_clean(label) or _clean(k)}" for i, (k, label) in enumerate(items)
    ]
    return "\n".join(lines) + "\n"


def read_vocab(path: Path) -> tuple[list[str], list[str]]:
    """Ids and labels of a vocabulary written by `vocab_tsv`, in index order."""
    if not path.is_file():
        raise DataError("missing vocabulary file; not a link-prediction model folder", path)
    ids, labels = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()[1:], start=2):
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] != str(len(ids)):
            raise DataError("malformed vocabulary line", path, n)
        ids.append(parts[1])
        labels.append(parts[2])
    return ids, labels


def write_vocabularies(folder: Path, kg: Any, entity_ids: Sequence[str], relation_ids: Sequence[str]) -> None:
    """``entities.tsv`` and ``relations.tsv`` of a model folder, in index order, with labels."""
    from kelm.atomic import write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / ENTITIES_FILE, vocab_tsv([(e, kg.entities[e].label) for e in entity_ids]))
    write_text_atomic(folder / RELATIONS_FILE, vocab_tsv([(r, kg.relations[r].label) for r in relation_ids]))
