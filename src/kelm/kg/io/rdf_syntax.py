"""Streaming RDF parsing with rdflib: N-Triples line by line, Turtle statement by statement.

Both yield ``(line_number, subject, predicate, object)`` as rdflib terms. Blank-node labels
keep their name (``_:b1`` stays ``b1``) so the same label means the same node file-wide,
without a table of labels growing with the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from rdflib import BNode
from rdflib.plugins.parsers.notation3 import RDFSink, SinkParser
from rdflib.plugins.parsers.ntriples import W3CNTriplesParser, r_nodeid
from rdflib.term import Node

from kelm.kg.io.lines import iter_lines, reject
from kelm.kg.io.report import ReadReport

RdfStatement = tuple[int, Node, Node, Node]

_SPACE = re.compile(r"[ \t\f\v]*")
_SPARQL_DIRECTIVE = re.compile(r"(?i)(PREFIX|BASE)(?=[\s<]|$)")
_SPECIAL = re.compile(r"[\"'<#\[\]().\\]")
#: Characters after a '.' that make it a statement terminator rather than part of a name or number.
_AFTER_TERMINATOR = frozenset(" \t\f\v#<[(\"'@")


def _short(message: str, limit: int = 200) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


class _TripleCatcher:
    """An rdflib sink keeping the triples of the current line or statement."""

    def __init__(self) -> None:
        self.items: list[tuple[Node, Node, Node]] = []

    def triple(self, s: Node, p: Node, o: Node) -> None:
        self.items.append((s, p, o))

    def add(self, spo: tuple[Node, Node, Node]) -> None:
        self.items.append(spo)


class _NTriplesLineParser(W3CNTriplesParser):
    """rdflib's N-Triples parser fed one line at a time; blank-node labels are kept."""

    def nodeid(self, bnode_context: dict[str, str] | None = None) -> BNode | bool:
        if self.peek("_"):
            return BNode(self.eat(r_nodeid).group(1))
        return False

    def parse_line(self, text: str) -> None:
        self.line = text
        self.parseline()


def iter_ntriples(
    path: str | Path, *, skip_bad: bool = False, report: ReadReport | None = None
) -> Iterator[RdfStatement]:
    """Stream an N-Triples file; a syntax error names its line."""
    report = report if report is not None else ReadReport()
    catcher = _TripleCatcher()
    parser = _NTriplesLineParser(sink=catcher)
    for number, text in iter_lines(path, skip_bad=skip_bad, report=report):
        catcher.items.clear()
        try:
            parser.parse_line(text)
        except Exception as exc:  # rdflib raises several exception types for bad input
            message = f"N-Triples syntax error: {_short(str(exc))}"
            reject(message, path, number, skip_bad=skip_bad, report=report)
            continue
        for s, p, o in catcher.items:
            yield number, s, p, o


class TurtleStatementSplitter:
    """Cuts Turtle text into top-level statements and directives, line by line.

    Tracks string literals (including triple-quoted ones), IRIs, comments and bracket depth,
    so a '.' ends a statement only at the top level and not inside a name or number.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._parts: list[str] = []
        self._start: int | None = None
        self._quote: str | None = None
        self._in_iri = False
        self._depth = 0
        self._sparql = False

    def feed(self, number: int, line: str) -> Iterator[tuple[int, str]]:
        """Consume one line; yield ``(first_line, text)`` for each statement it completes."""
        i = 0
        n = len(line)
        while True:
            if self._start is None:
                i = _SPACE.match(line, i).end()
                if i >= n or line[i] == "#":
                    return
                self._start = number
                self._sparql = _SPARQL_DIRECTIVE.match(line, i) is not None
            begin = i
            end = self._scan(line, i)
            if end < 0:
                self._parts.append(line[begin:] + "\n")
                return
            self._parts.append(line[begin:end])
            yield self._take()
            i = end

    def finish(self) -> tuple[int, str] | None:
        """The unterminated rest at the end of the input, if any."""
        if self._start is None or not "".join(self._parts).strip():
            return None
        return self._take()

    def _take(self) -> tuple[int, str]:
        start = self._start if self._start is not None else 0
        text = "".join(self._parts)
        self._reset()
        return start, text

    def _scan(self, line: str, i: int) -> int:
        """Index just past a statement end in ``line`` from ``i``, or -1 if the line ends first."""
        n = len(line)
        while i < n:
            if self._quote is not None:
                i = self._scan_string(line, i)
                if i < 0:
                    return -1
            elif self._in_iri:
                j = line.find(">", i)
                self._in_iri = False
                if j < 0:
                    return -1  # IRIs cannot span lines; rdflib reports the error
                i = j + 1
                if self._sparql and self._depth == 0:
                    return i
            else:
                m = _SPECIAL.search(line, i)
                if m is None or m.group() == "#":
                    return -1
                c, j = m.group(), m.start()
                i = j + 1
                if c in "\"'":
                    self._quote = c * 3 if line.startswith(c * 3, j) else c
                    i = j + len(self._quote)
                elif c == "\\":
                    i = j + 2  # an escaped character in a local name, such as ex:a\.b
                elif c == "<":
                    self._in_iri = True
                elif c in "[(":
                    self._depth += 1
                elif c in "])":
                    self._depth = max(0, self._depth - 1)
                elif self._depth == 0 and (i >= n or line[i] in _AFTER_TERMINATOR):
                    return i
        return -1

    def _scan_string(self, line: str, i: int) -> int:
        """Advance through a string literal; -1 if it continues past this line."""
        quote = self._quote or ""
        n = len(line)
        while i < n:
            j = min((k for k in (line.find("\\", i), line.find(quote, i)) if k >= 0), default=-1)
            if j < 0:
                break
            if line[j] == "\\":
                i = j + 2
                continue
            if len(quote) == 3:
                while line.startswith(quote[0], j + 3):
                    j += 1  # a long string may end with up to two extra quotes of its own
            self._quote = None
            return j + len(quote)
        if len(quote) == 1:
            self._quote = None  # short strings end at the line end; rdflib reports the error
        return -1


class _LabelKeepingSinkParser(SinkParser):
    def anonymousNode(self, ln: str) -> BNode:  # noqa: N802 - overrides rdflib
        return BNode(ln)


def _error_line(exc: Exception, start: int) -> int:
    """The file line of an rdflib syntax error inside a statement starting at ``start``."""
    text, index = getattr(exc, "_str", None), getattr(exc, "_i", None)
    if isinstance(text, bytes) and isinstance(index, int):
        return start + text[:index].count(b"\n")
    return start


def _error_reason(exc: Exception) -> str:
    return _short(str(getattr(exc, "_why", None) or exc))


def iter_turtle(
    path: str | Path, *, skip_bad: bool = False, report: ReadReport | None = None
) -> Iterator[RdfStatement]:
    """Stream a Turtle file statement by statement; prefixes and base persist across statements."""
    report = report if report is not None else ReadReport()
    path = Path(path)
    catcher = _TripleCatcher()
    parser = _LabelKeepingSinkParser(RDFSink(catcher), baseURI=path.resolve().as_uri(), turtle=True)
    parser.startDoc()
    splitter = TurtleStatementSplitter()

    def parse(start: int, text: str) -> Iterator[RdfStatement]:
        catcher.items.clear()
        try:
            parser.feed(text)
        except Exception as exc:  # rdflib raises several exception types for bad input
            line = _error_line(exc, start)
            reject(f"Turtle syntax error: {_error_reason(exc)}", path, line, skip_bad=skip_bad, report=report)
            return
        for s, p, o in catcher.items:
            yield start, s, p, o

    for number, line in iter_lines(path, skip_bad=skip_bad, report=report):
        for start, text in splitter.feed(number, line):
            yield from parse(start, text)
    rest = splitter.finish()
    if rest is not None:
        yield from parse(*rest)
