"""Knowledge graphs: the data model, readers and writers, graph stores and tensor export.

This layer holds no training code; models consume what `kelm.kg.tensors` exports.
"""

from kelm.kg.model import Entity, GraphChunk, KnowledgeGraph, Provenance, Relation, Triple

__all__ = ["Entity", "GraphChunk", "KnowledgeGraph", "Provenance", "Relation", "Triple"]
