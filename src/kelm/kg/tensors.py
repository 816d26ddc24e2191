"""Export a knowledge graph to tensors for training: vocabularies, int64 triples, edge_index."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kelm.atomic import atomic_path, write_text_atomic
from kelm.errors import DataError
from kelm.kg.model import KnowledgeGraph
from kelm.kg.store.base import GraphStore

TENSORS_FILE = "triples.safetensors"
VOCAB_FILE = "vocab.json"


def ragged_gather(
    values: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, items)``: for each ``b``, ``values[starts[b] : starts[b] + lengths[b]]`` with ``rows = b``.

    The CSR runs of many rows in one vectorised gather, without a Python loop over rows."""
    rows = torch.repeat_interleave(torch.arange(len(starts), device=values.device), lengths)
    first = lengths.cumsum(0) - lengths  # where each row's run starts in the flat output
    idx = torch.arange(len(rows), device=values.device) - first[rows] + starts[rows]
    return rows, values[idx]


@dataclass
class TripleTensors:
    """Index-mapped triples. ``triples[split]`` is an ``(n, 3)`` int64 tensor of (head, relation, tail).

    Ids are numbered in sorted order, so the same graph always maps to the same indices.
    """

    entity_ids: list[str]
    relation_ids: list[str]
    triples: dict[str, torch.Tensor]

    @property
    def num_entities(self) -> int:
        return len(self.entity_ids)

    @property
    def num_relations(self) -> int:
        return len(self.relation_ids)

    def entity_index(self) -> dict[str, int]:
        return {e: i for i, e in enumerate(self.entity_ids)}

    def relation_index(self) -> dict[str, int]:
        return {r: i for i, r in enumerate(self.relation_ids)}

    def edge_index(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """``edge_index`` (2, E) as PyG expects (row 0 source, row 1 target) and ``edge_type`` (E,)."""
        t_N3 = self.triples[split]
        return t_N3[:, [0, 2]].t().contiguous(), t_N3[:, 1].contiguous()

    @classmethod
    def from_graph(
        cls, kg: KnowledgeGraph, entity_ids: list[str] | None = None, relation_ids: list[str] | None = None
    ) -> TripleTensors:
        """Index the graph: entities and relations in sorted order, or in the given orders (which
        must list each of the graph's ids once, e.g. from `kelm.kg.vocab.grown_order`)."""
        entity_ids = entity_ids if entity_ids is not None else sorted(kg.entities)
        relation_ids = relation_ids if relation_ids is not None else sorted(kg.relations)
        e_idx = {e: i for i, e in enumerate(entity_ids)}
        r_idx = {r: i for i, r in enumerate(relation_ids)}
        triples = {}
        for split, ts in kg.splits.items():
            rows = [(e_idx[t.head], r_idx[t.relation], e_idx[t.tail]) for t in ts]
            triples[split] = torch.tensor(rows, dtype=torch.int64).reshape(-1, 3)
        return cls(entity_ids, relation_ids, triples)

    @classmethod
    def from_store(cls, store: GraphStore) -> TripleTensors:
        return cls.from_graph(store.export())

    def save(self, folder: str | Path) -> Path:
        """Write ``triples.safetensors`` and ``vocab.json`` atomically into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"triples.{s}": t.contiguous() for s, t in self.triples.items()}
        with atomic_path(out / TENSORS_FILE) as tmp:
            save_file(tensors, str(tmp))
        vocab = {"entities": self.entity_ids, "relations": self.relation_ids, "splits": list(self.triples)}
        write_text_atomic(out / VOCAB_FILE, json.dumps(vocab))
        return out

    @classmethod
    def load(cls, folder: str | Path) -> TripleTensors:
        folder = Path(folder)
        for name in (TENSORS_FILE, VOCAB_FILE):
            if not (folder / name).is_file():
                raise DataError(f"missing {name}; not a kelm tensor export", folder)
        vocab = json.loads((folder / VOCAB_FILE).read_text(encoding="utf-8"))
        raw = load_file(str(folder / TENSORS_FILE))
        triples = {s: raw[f"triples.{s}"] for s in vocab["splits"]}
        return cls(vocab["entities"], vocab["relations"], triples)
