"""The KGQA question file format: one question per line, the topic entity in brackets.

    what is the occupation of [Douglas Adams]<TAB>writer|screenwriter

The first column is the question text, holding exactly one ``[topic entity]`` (its name: the
entity's label, disambiguated as ``label (id)`` where labels repeat). The second column lists the
answer entities' names separated by ``|``. Blank lines are skipped. Files are named
``{split}_{k}hop.txt`` (``train_2hop.txt``), so the hop count is the file's, not a column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kelm.atomic import write_text_atomic
from kelm.errors import DataError

SPLITS = ("train", "dev", "test")
ANSWER_SEP = "|"
_MENTION = re.compile(r"\[([^\[\]]+)\]")
#: Characters a name may not hold (they delimit mentions, columns and answers).
_RESERVED = str.maketrans({"[": "(", "]": ")", "|": "/", "\t": " ", "\n": " ", "\r": " "})


@dataclass(frozen=True, slots=True)
class Question:
    """A question, its topic entity's name, its answer names and how many hops it takes."""

    text: str
    topic: str
    answers: tuple[str, ...]
    hops: int = 0
    line: int = 0

    def masked(self, placeholder: str = "the entity") -> str:
        """The text with the topic mention replaced (so a model cannot lean on the name)."""
        return _MENTION.sub(placeholder, self.text, count=1)


def clean_name(name: str) -> str:
    """A name safe inside a question line: no brackets, bars, tabs or line breaks."""
    return " ".join(name.translate(_RESERVED).split())


def find_topic(text: str) -> str | None:
    """The name in the first ``[...]`` of ``text``, or None when there is none."""
    m = _MENTION.search(text)
    return m.group(1).strip() if m else None


def parse_line(raw: str, path: str | Path = "<text>", line: int = 0, hops: int = 0) -> Question:
    """One question line; a malformed one raises `DataError` naming ``path:line``."""
    parts = raw.rstrip("\r\n").split("\t")
    if len(parts) != 2:
        raise DataError(f"expected 2 tab-separated columns (question, answers), found {len(parts)}", path, line)
    text, answer_field = parts[0].strip(), parts[1].strip()
    mentions = _MENTION.findall(text)
    if len(mentions) != 1 or text.count("[") != 1 or text.count("]") != 1:
        raise DataError(f"the question must hold exactly one [topic entity], found {len(mentions)}", path, line)
    answers = tuple(a.strip() for a in answer_field.split(ANSWER_SEP))
    if not answer_field or any(not a for a in answers):
        raise DataError("empty answer", path, line)
    return Question(text, mentions[0].strip(), answers, hops, line)


def format_line(q: Question) -> str:
    return f"{q.text}\t{ANSWER_SEP.join(q.answers)}"


def hops_of(path: Path) -> int:
    """The hop count in a file name like ``test_2hop.txt`` (0 if it names none)."""
    m = re.search(r"_(\d+)hop\b", path.name)
    return int(m.group(1)) if m else 0


def read_questions(path: str | Path, hops: int | None = None) -> list[Question]:
    """Every question of a file; errors name the file and line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read ({err.strerror})", path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError("invalid UTF-8", path, data[: err.start].count(b"\n") + 1) from None
    k = hops_of(path) if hops is None else hops
    return [parse_line(raw, path, n, k) for n, raw in enumerate(text.splitlines(), start=1) if raw.strip()]


def write_questions(path: str | Path, questions: Iterable[Question]) -> int:
    """Write questions atomically; returns how many."""
    lines = [format_line(q) for q in questions]
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return len(lines)


def split_file(folder: str | Path, split: str, hops: int) -> Path:
    return Path(folder) / f"{split}_{hops}hop.txt"


def read_split(folder: str | Path, split: str, hops: Iterable[int]) -> list[Question]:
    """The questions of one split over the given hop counts (missing files are skipped)."""
    out: list[Question] = []
    for k in hops:
        path = split_file(folder, split, k)
        if path.is_file():
            out += read_questions(path, k)
    return out
