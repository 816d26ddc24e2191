"""Horn rules, their counts, and the rules file (TSV, one rule per line, readable and exact).

A rule predicts one head atom from a path of body atoms:

- **cyclic**: ``r(X, Y) <= b1(X, A), b2(A, B), b3(B, Y)``, the path runs from X to Y;
- **ac1**: ``r(X, c) <= b1(X, A), b2(A, d)``, a path from X that ends at the constant d;
- **ac2**: ``r(X, c) <= b1(X, A)``, a path from X that ends anywhere.

Acyclic rules also come mirrored, ``r(c, Y) <= ...`` with the path starting at Y: ``anchor`` says
which argument of the head the path starts from. Each body atom is a ``Step``: a relation, walked
forwards or inversely (``b(A, X)`` is ``b`` walked inversely from X).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kelm.atomic import write_text_atomic
from kelm.errors import DataError
from kelm.reason.graph import RuleGraph, Step

Kind = Literal["cyclic", "ac1", "ac2"]
Anchor = Literal["head", "tail"]
KINDS = ("cyclic", "ac1", "ac2")
FORMAT = "kelm-rules/1"
COLUMNS = (
    "kind", "head", "anchor", "head_constant", "body", "body_constant",
    "support", "body_groundings", "confidence", "pca_confidence", "rule",
)  # fmt: skip
_VARIABLES = "XABCY"


@dataclass(frozen=True)
class Rule:
    """A Horn rule over relation and entity indices of one `RuleGraph`."""

    head: int
    body: tuple[Step, ...]
    kind: Kind = "cyclic"
    anchor: Anchor = "head"  # acyclic: the head argument the body path starts from
    head_constant: int | None = None  # acyclic: the other head argument
    body_constant: int | None = None  # ac1: where the body path ends

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown rule kind {self.kind!r}")
        if not 1 <= len(self.body) <= 3:
            raise ValueError("a rule body has 1 to 3 atoms")
        if (self.kind == "cyclic") != (self.head_constant is None):
            raise ValueError("an acyclic rule has a head constant, a cyclic one none")
        if (self.kind == "ac1") != (self.body_constant is not None):
            raise ValueError("only an ac1 rule ends its body at a constant")

    @property
    def trivial(self) -> bool:
        """The body contains the head atom itself (``r(X, Y) <= r(X, Y)``, ``r(X, c) <= r(X, c)``)."""
        if len(self.body) != 1:
            return False
        ((rel, inverse),) = self.body
        if rel != self.head:
            return False
        if self.kind == "cyclic":
            return not inverse
        if self.kind == "ac1":
            # r(X, c) <= r(X, c) walks forward from X; r(c, Y) <= r(c, Y) walks inversely from Y
            return self.body_constant == self.head_constant and inverse == (self.anchor == "tail")
        return False

    def text(self, graph: RuleGraph) -> str:
        """The rule as a person reads it, with relation and entity ids."""
        rel, ent = graph.relation_ids, graph.entity_ids
        n = len(self.body)
        start = "X" if self.anchor == "head" or self.kind == "cyclic" else "Y"
        names = [start] + list("ABC"[: n - 1])
        if self.kind == "cyclic":
            names.append("Y")
        elif self.kind == "ac1":
            names.append(ent[self.body_constant])  # type: ignore[index]
        else:
            names.append("ABC"[n - 1])
        atoms = []
        for i, (r, inverse) in enumerate(self.body):
            a, b = names[i], names[i + 1]
            atoms.append(f"{rel[r]}({b}, {a})" if inverse else f"{rel[r]}({a}, {b})")
        if self.kind == "cyclic":
            head = f"{rel[self.head]}(X, Y)"
        elif self.anchor == "head":
            head = f"{rel[self.head]}(X, {ent[self.head_constant]})"  # type: ignore[index]
        else:
            head = f"{rel[self.head]}({ent[self.head_constant]}, Y)"  # type: ignore[index]
        return f"{head} <= {', '.join(atoms)}"


@dataclass(frozen=True)
class ScoredRule:
    """A rule with its counts over the training facts.

    ``body_groundings`` counts the distinct head-argument bindings (pairs for a cyclic rule, the
    variable for an acyclic one) that satisfy the body; ``support`` those of them that are facts;
    ``pca_body`` those whose variable (X for cyclic rules) has some fact of the head relation. With
    ``sampled``, the counts are estimates from a sample of the body's start entities.
    """

    rule: Rule
    support: float
    body_groundings: float
    pca_body: float
    sampled: bool = False

    @property
    def confidence(self) -> float:
        return self.support / self.body_groundings if self.body_groundings else 0.0

    @property
    def pca_confidence(self) -> float:
        return self.support / self.pca_body if self.pca_body else 0.0

    def applied_confidence(self, smoothing: float) -> float:
        """Confidence with ``smoothing`` unseen negatives added: rare rules rank below frequent ones."""
        return self.support / (self.body_groundings + smoothing)


def save_rules(path: Path, rules: Iterable[ScoredRule], graph: RuleGraph, meta: dict | None = None) -> int:
    """Write the rules file atomically, best rules first; returns how many were written."""
    rows = sorted(rules, key=lambda s: (-s.confidence, -s.support, s.rule.text(graph)))
    ent, rel = graph.entity_ids, graph.relation_ids
    info = {"format": FORMAT, "graph": graph.fingerprint, "entities": graph.num_entities}
    info |= {"relations": graph.num_relations, "rules": len(rows), **(meta or {})}
    lines = [f"# {json.dumps(info, sort_keys=True)}", "\t".join(COLUMNS)]
    for s in rows:
        r = s.rule
        body = json.dumps([[rel[b], bool(inv)] for b, inv in r.body], ensure_ascii=False)
        lines.append("\t".join([
            r.kind, rel[r.head], r.anchor if r.kind != "cyclic" else "",
            "" if r.head_constant is None else ent[r.head_constant], body,
            "" if r.body_constant is None else ent[r.body_constant],
            _number(s.support), _number(s.body_groundings), f"{s.confidence:.6g}", f"{s.pca_confidence:.6g}",
            r.text(graph),
        ]))  # fmt: skip
    write_text_atomic(path, "\n".join(lines) + "\n")
    return len(rows)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.6g}"


def load_rules(path: Path, graph: RuleGraph) -> list[ScoredRule]:
    """Read a rules file written for ``graph``; a corrupt line or another graph is one `DataError`."""
    if not path.is_file():
        raise DataError("no such rules file", path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("# "):
        raise DataError(f"not a kelm rules file (its first line should be the '{FORMAT}' header)", path, 1)
    try:
        info = json.loads(lines[0][2:])
    except json.JSONDecodeError:
        raise DataError("the header line is not JSON", path, 1) from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DataError(f"not a kelm rules file (expected format '{FORMAT}')", path, 1)
    if info.get("graph") != graph.fingerprint:
        raise DataError(
            f"these rules were mined on another graph ({info.get('entities')} entities, {info.get('relations')} "
            f"relations; this one has {graph.num_entities} and {graph.num_relations})",
            path,
            1,
        )
    if len(lines) < 2 or lines[1].split("\t") != list(COLUMNS):
        raise DataError(f"the second line should name the columns: {' '.join(COLUMNS)}", path, 2)
    e_idx, r_idx = graph.entity_ids, graph.relation_ids
    entities = {x: i for i, x in enumerate(e_idx)}
    relations = {x: i for i, x in enumerate(r_idx)}
    out = []
    for number, line in enumerate(lines[2:], start=3):
        if not line.strip():
            continue
        try:
            out.append(_parse_row(line.split("\t"), entities, relations))
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
            raise DataError(f"bad rule: {err}", path, number) from None
    return out


def _parse_row(cells: Sequence[str], entities: dict[str, int], relations: dict[str, int]) -> ScoredRule:
    if len(cells) != len(COLUMNS):
        raise ValueError(f"expected {len(COLUMNS)} tab-separated columns, found {len(cells)}")
    row = dict(zip(COLUMNS, cells, strict=True))

    def entity(name: str) -> int | None:
        if not name:
            return None
        if name not in entities:
            raise KeyError(f"unknown entity '{name}'")
        return entities[name]

    def relation(name: str) -> int:
        if name not in relations:
            raise KeyError(f"unknown relation '{name}'")
        return relations[name]

    body = json.loads(row["body"])
    if not isinstance(body, list) or not all(isinstance(b, list) and len(b) == 2 for b in body):
        raise ValueError("the body should be a JSON list of [relation, inverse] pairs")
    rule = Rule(
        relation(row["head"]),
        tuple((relation(b), bool(inv)) for b, inv in body),
        row["kind"],  # type: ignore[arg-type]
        (row["anchor"] or "head"),  # type: ignore[arg-type]
        entity(row["head_constant"]),
        entity(row["body_constant"]),
    )
    if rule.anchor not in ("head", "tail"):
        raise ValueError(f"anchor should be head or tail, not '{rule.anchor}'")
    support, body_n = float(row["support"]), float(row["body_groundings"])
    pca = float(row["pca_confidence"])
    if not (0 <= support <= body_n) or not 0 <= pca <= 1:
        raise ValueError("support must lie between 0 and body_groundings, pca_confidence between 0 and 1")
    pca_body = support / pca if pca > 0 else body_n
    return ScoredRule(rule, support, body_n, pca_body)
