"""Entity linking: mentions in text → knowledge-graph entities (exact aliases, then embeddings)."""

from kelm.linking.linker import EntityLinker, Mention

__all__ = ["EntityLinker", "Mention"]
