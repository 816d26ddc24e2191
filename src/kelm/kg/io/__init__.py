"""Knowledge-graph readers and writers: TSV/CSV triples, N-Triples, Turtle, text side files,
CoDEx JSON, whole data-set folders, and streaming chunks for large files.

Every problem with the input raises `kelm.errors.DataError` naming the file and line;
``skip_bad=True`` skips and counts such lines in a `ReadReport` instead.
"""

from __future__ import annotations

from kelm.kg.io.chunks import iter_triples
from kelm.kg.io.codex import read_entity_types, read_json_text, read_type_labels
from kelm.kg.io.folder import find_split_files, iter_chunks, load_kg
from kelm.kg.io.formats import DEFAULT_BASE_IRI, DEFAULT_CHUNK_SIZE
from kelm.kg.io.rdf import iter_rdf_chunks, iter_rdf_triples
from kelm.kg.io.report import ReadReport
from kelm.kg.io.text import read_entity_text, read_id_text, read_ids, read_relation_text
from kelm.kg.io.triples import iter_delimited
from kelm.kg.io.writers import write_ntriples, write_tsv

__all__ = [
    "DEFAULT_BASE_IRI",
    "DEFAULT_CHUNK_SIZE",
    "ReadReport",
    "find_split_files",
    "iter_chunks",
    "iter_delimited",
    "iter_rdf_chunks",
    "iter_rdf_triples",
    "iter_triples",
    "load_kg",
    "read_entity_text",
    "read_entity_types",
    "read_id_text",
    "read_ids",
    "read_json_text",
    "read_relation_text",
    "read_type_labels",
    "write_ntriples",
    "write_tsv",
]
