"""Graph encoders over retrieved subgraphs: R-GCN or GAT layers on entity features.

Node features come from a KGE-style entity table (``nn.Embedding``, optionally copied from a
trained kelm link-prediction model) or from fixed entity text embeddings through a linear map.
Message passing runs over each fact in both directions: relation ``r`` forwards and ``r + R``
backwards, plus two more types for the edges to and from a per-graph context node (GreaseLM).
R-GCN (`RGCNConv`, basis-decomposed) gives each type its own transform; GAT (`GATConv`) adds a
learnt embedding of the edge type as ``edge_attr`` to the attention and messages. Each layer is
residual with layer norm, and `layer` runs one layer alone, so an LM can interleave them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATConv, RGCNConv

from kelm.errors import ConfigError

GNNKind = Literal["rgcn", "gat"]


class GraphEncoder(nn.Module):
    def __init__(
        self,
        num_entities: int,
        num_relations: int,
        dim: int,
        layers: int,
        kind: GNNKind = "rgcn",
        text_features: torch.Tensor | None = None,
        dropout: float = 0.1,
        heads: int = 2,
        num_bases: int | None = 8,
    ):
        super().__init__()
        self.num_relations, self.dim = num_relations, dim
        self.num_types = 2 * num_relations + 2
        if text_features is not None:
            self.register_buffer("text_features", text_features.float(), persistent=False)
            self.text_proj = nn.Linear(text_features.shape[1], dim)
            self.entity = None
        else:
            self.text_features = None
            self.entity = nn.Embedding(num_entities, dim)
            nn.init.normal_(self.entity.weight, std=dim**-0.5)
        if kind == "rgcn":
            bases = min(num_bases, self.num_types) if num_bases else None
            self.convs = nn.ModuleList(RGCNConv(dim, dim, self.num_types, num_bases=bases) for _ in range(layers))
            self.edge_emb = None
        elif kind == "gat":
            if dim % heads:
                raise ConfigError(f"task.gnn_dim ({dim}) must be divisible by task.gat_heads ({heads})")
            self.convs = nn.ModuleList(GATConv(dim, dim // heads, heads=heads, edge_dim=dim) for _ in range(layers))
            self.edge_emb = nn.Embedding(self.num_types, dim)
        else:
            raise ConfigError(f"task.gnn must be rgcn or gat, not {kind!r}")
        self.kind = kind
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)

    @property
    def num_layers(self) -> int:
        return len(self.convs)

    def features(self, node_ids: torch.Tensor) -> torch.Tensor:
        """Input states ``(N, dim)`` of entity nodes (global ids)."""
        if self.entity is not None:
            return self.entity(node_ids)
        assert self.text_features is not None
        return self.text_proj(self.text_features[node_ids])

    def layer(self, i: int, x: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor) -> torch.Tensor:
        """Layer ``i``: ``x + dropout(gelu(conv(x)))``, then layer norm."""
        if self.edge_emb is not None:
            out = self.convs[i](x, edge_index, edge_attr=self.edge_emb(edge_type))
        else:
            out = self.convs[i](x, edge_index, edge_type)
        return self.norms[i](x + self.dropout(F.gelu(out)))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_layers):
            x = self.layer(i, x, edge_index, edge_type)
        return x

    @torch.no_grad()
    def init_from_kge(self, folder: str | Path, entity_ids: list[str]) -> int:
        """Copy entity vectors of a trained kelm KGE model (a run or its ``model/`` folder) by entity id.

        A table of another width is fitted by a fixed random projection. Returns how many rows were set."""
        from kelm.kg.vocab import ENTITIES_FILE, read_vocab
        from kelm.kge.folder import load_kge

        if self.entity is None:
            raise ConfigError("task.kge_init needs node_features = 'kge' (an entity table to initialise)")
        path = Path(folder)
        path = path / "model" if (path / "model").is_dir() else path
        model, _ = load_kge(path)
        ids, _ = read_vocab(path / ENTITIES_FILE)
        table = model.entity.weight.detach().float()
        if table.shape[1] != self.dim:
            gen = torch.Generator().manual_seed(0)
            table = table @ torch.randn(table.shape[1], self.dim, generator=gen) / table.shape[1] ** 0.5
        table = table * (self.dim**-0.5 / table.std().clamp_min(1e-8))  # the scale of a fresh table
        row = {e: i for i, e in enumerate(ids)}
        hits = [(i, row[e]) for i, e in enumerate(entity_ids) if e in row]
        if not hits:
            raise ConfigError(f"task.kge_init: {folder} shares no entity with the graph")
        ours, theirs = (torch.tensor(c) for c in zip(*hits, strict=True))
        self.entity.weight[ours] = table[theirs]
        return len(hits)


__all__ = ["GNNKind", "GraphEncoder"]
