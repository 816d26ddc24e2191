"""File formats recognised by extension, and shared defaults."""

from __future__ import annotations

from pathlib import Path

from kelm.errors import DataError

DEFAULT_CHUNK_SIZE = 50_000
#: Ids that are not absolute IRIs are written under this base; readers strip it again.
DEFAULT_BASE_IRI = "urn:kelm:"

DELIMITED = {".tsv": "\t", ".txt": "\t", ".csv": ","}
RDF_FORMATS = {".nt": "nt", ".ntriples": "nt", ".ttl": "turtle", ".turtle": "turtle"}
TRIPLE_SUFFIXES = tuple(DELIMITED) + tuple(RDF_FORMATS)


def triple_format(path: str | Path) -> str:
    """``"delimited"``, ``"nt"`` or ``"turtle"`` for a triple file, by its extension."""
    suffix = Path(path).suffix.lower()
    if suffix in DELIMITED:
        return "delimited"
    if suffix in RDF_FORMATS:
        return RDF_FORMATS[suffix]
    known = ", ".join(TRIPLE_SUFFIXES)
    raise DataError(f"unsupported file type '{suffix or '(none)'}'; expected one of {known}", path)


def default_delimiter(path: str | Path) -> str:
    """Comma for ``.csv``, tab otherwise."""
    return DELIMITED.get(Path(path).suffix.lower(), "\t")
