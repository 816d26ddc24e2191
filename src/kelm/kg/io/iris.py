"""Mapping kelm ids to RDF terms and back.

Ids that are already absolute IRIs stay as they are; ``_:label`` ids become blank nodes; any
other id is percent-encoded under a base IRI, which readers given the same base strip again.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from rdflib import BNode, URIRef
from rdflib.term import Node

_ABSOLUTE_IRI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\x00-\x20<>\"{}|^`\\]+")
_BLANK_ID = re.compile(r"_:[A-Za-z0-9_][A-Za-z0-9_\-]*")


def is_absolute_iri(value: str) -> bool:
    return _ABSOLUTE_IRI.fullmatch(value) is not None


def id_to_iri(value: str, base_iri: str) -> str:
    """The IRI for a node or relation id."""
    if is_absolute_iri(value) and not (base_iri and value.startswith(base_iri)):
        return value
    return base_iri + quote(value, safe="")


def id_to_nt(value: str, base_iri: str, *, allow_blank: bool = True) -> str:
    """An id in N-Triples syntax: ``<iri>`` or, for ``_:label`` ids, a blank node."""
    if allow_blank and _BLANK_ID.fullmatch(value):
        return value
    return f"<{id_to_iri(value, base_iri)}>"


def term_to_id(term: Node, base_iri: str | None) -> str:
    """The kelm id of an IRI or blank node; IRIs under ``base_iri`` lose the base."""
    if isinstance(term, BNode):
        return f"_:{term}"
    text = str(term)
    if base_iri and isinstance(term, URIRef) and text.startswith(base_iri) and len(text) > len(base_iri):
        return unquote(text[len(base_iri) :])
    return text


def nt_literal(text: str) -> str:
    """A plain string literal in N-Triples syntax."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'
