"""Subgraphs batched for the question-answering models, and the model a saved ``[model]`` spec describes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kelm.errors import ConfigError
from kelm.kgqa.graph import LocalSubgraph
from kelm.kgqa.models import KGQAModel, LMQAModel
from kelm.lm.encoding import load_encoder
from kelm.train.task import Batch

#: The file of a saved question-answering model that holds its answer threshold.
QA_FILE = "kgqa.json"


@dataclass
class SubgraphTensors:
    """A subgraph ready to batch: nodes, edges both ways (``r`` head→tail, ``r + R`` tail→head)
    as local indices, and where each entity id sits among the nodes."""

    nodes: torch.Tensor
    edge_index: torch.Tensor
    edge_type: torch.Tensor
    positions: dict[int, int]

    @classmethod
    def of(cls, sub: LocalSubgraph, num_relations: int) -> SubgraphTensors:
        src, dst, rel = (torch.tensor(x, dtype=torch.int64) for x in (sub.src, sub.dst, sub.rel))
        return cls(
            torch.tensor(sub.nodes, dtype=torch.int64),
            torch.stack([torch.cat([src, dst]), torch.cat([dst, src])]),
            torch.cat([rel, rel + num_relations]),
            {g: j for j, g in enumerate(sub.nodes)},
        )


def collate_subgraphs(subgraphs: list[SubgraphTensors]) -> Batch:
    """Subgraphs concatenated into one graph: nodes, each node's question, topic positions, edges.
    ``_positions`` maps entity ids to node positions per question."""
    sizes = torch.tensor([len(s.nodes) for s in subgraphs], dtype=torch.int64)
    offsets = torch.cumsum(sizes, 0) - sizes
    return {
        "nodes": torch.cat([s.nodes for s in subgraphs]),
        "node_batch": torch.repeat_interleave(torch.arange(len(subgraphs)), sizes),
        "topic_pos": offsets,
        "edge_index": torch.cat([s.edge_index + int(o) for s, o in zip(subgraphs, offsets, strict=True)], 1),
        "edge_type": torch.cat([s.edge_type for s in subgraphs]),
        "_positions": [
            {g: int(o) + j for g, j in s.positions.items()} for s, o in zip(subgraphs, offsets, strict=True)
        ],
    }


def build_qa_model(
    spec: dict[str, Any], entity_text: torch.Tensor | None = None, relation_text: torch.Tensor | None = None
) -> nn.Module:
    """The model a ``[model]`` spec describes (weights fresh; a fine-tuned encoder starts pretrained)."""
    encoder = None
    if spec["finetune_encoder"]:
        from kelm.lm.hf import load_tokenizer

        sizes = {k: spec[k] for k in ("hidden_size", "num_layers", "num_heads")}
        encoder = load_encoder(spec["encoder"], load_tokenizer(spec["encoder"]), sizes)
    if spec["model"] == "lm":
        if entity_text is None:
            entity_text = torch.zeros(spec["num_entities"], spec["q_dim"])
        return LMQAModel(encoder, spec["q_dim"], spec["dim"], entity_text)
    if spec["model"] != "kg":
        raise ConfigError(f"unknown question-answering model '{spec['model']}' (lm or kg)")
    return KGQAModel(encoder, spec["q_dim"], spec["dim"], spec["num_relations"], spec["reasoning_hops"], relation_text)


__all__ = ["QA_FILE", "SubgraphTensors", "build_qa_model", "collate_subgraphs"]
