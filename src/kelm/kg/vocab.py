"""Vocabulary files of a model folder: ``index<TAB>id<TAB>label`` lines for entities and relations."""

from __future__ import annotations

from collections.abc import Collection, Sequence
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


def grown_order(old: Sequence[str], current: Collection[str], what: str, source: object) -> list[str]:
    """``old``'s ids in their order, then the ids new in ``current``, sorted: a vocabulary grown
    without moving any old id. Raises `DataError` if ``current`` lacks some of ``old``."""
    missing = [x for x in old if x not in current]
    if missing:
        raise DataError(
            f"the {what} vocabulary shrank: {len(missing):,} of the {len(old):,} {what} ids the model was "
            f"trained on are absent (e.g. '{missing[0]}'); a trained model can grow but not lose ids",
            source,
        )
    known = set(old)
    return list(old) + sorted(x for x in current if x not in known)


def vocabulary_change(old: Sequence[str], current: Sequence[str], what: str) -> str | None:
    """How ``current`` differs from ``old`` as one phrase (None: identical)."""
    if list(old) == list(current):
        return None
    now = set(current)
    lost = [x for x in old if x not in now]
    if lost:
        return f"the {what} vocabulary shrank ({len(lost):,} of {len(old):,} ids are gone, e.g. '{lost[0]}')"
    if len(current) > len(old):
        return f"the {what} vocabulary grew from {len(old):,} to {len(current):,} ids"
    moved = next(i for i, (a, b) in enumerate(zip(old, current, strict=True)) if a != b)
    return f"the {what} vocabulary changed order ('{old[moved]}' was id {moved}, now '{current[moved]}' is)"


def write_vocabularies(folder: Path, kg: Any, entity_ids: Sequence[str], relation_ids: Sequence[str]) -> None:
    """``entities.tsv`` and ``relations.tsv`` of a model folder, in index order, with labels."""
    from kelm.atomic import write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / ENTITIES_FILE, vocab_tsv([(e, kg.entities[e].label) for e in entity_ids]))
    write_text_atomic(folder / RELATIONS_FILE, vocab_tsv([(r, kg.relations[r].label) for r in relation_ids]))
