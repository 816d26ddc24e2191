"""A text classifier that reads a knowledge graph: LM-only, KG-only or joint (concat / GreaseLM).

``mode`` selects the ablation, and only the parts a mode uses are built:

- ``lm``: the language model's mean-pooled output → classifier. No graph encoder exists.
- ``kg``: the text serves only to link entities; the graph encoder's states of the linked
  entities, averaged (zeros when nothing was linked) → classifier. No language model exists.
- ``joint`` with ``fusion = "concat"``: [LM pooled ; KG pooled] → classifier.
- ``joint`` with ``fusion = "greaselm"``: after each of the top M LM layers (M = the number of
  GNN layers), one GNN layer runs on the subgraph, and the LM's interaction token and the
  graph's context node exchange information: ``[h_int ; e_ctx] → MLP → split`` (added back to
  both, a residual). The context node of each graph is linked to that graph's linked entities by
  two edge types of its own. The classifier reads [h_int ; e_ctx ; KG pooled].

Simplifications against GreaseLM (Zhang et al., 2022): the interaction token is the LM's first
token ([CLS]) rather than a new token; the GNN is R-GCN or GAT, not GreaseLM's relation-aware
GAT over node types and relevance scores; the context node starts from a learnt vector; there is
no relevance-scored node pruning (subgraphs are bounded by hops, fanout and a node cap).

Auxiliary losses, computed while training only (``joint``; ``kg`` has L_KG but no L_align):

- L_KG: a random share of the subgraph's facts (``kg_holdout``) is removed from message passing
  and scored with DistMult over the final node states, ``<x_h, w_r, x_t>``, against
  ``kg_negatives`` random nodes of the batch per fact as corrupted tails (softplus loss).
- L_align: InfoNCE between each mention's text vector (mean of its LM tokens) and its entity's
  final node state, both projected and normalised, with the batch's other mentions as negatives
  (mentions of the same entity are not counted as negatives), symmetric, with a temperature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.utils import scatter

from kelm.fusion.gnn import GraphEncoder
from kelm.lm.batching import model_inputs

Mode = Literal["lm", "kg", "joint"]
Fusion = Literal["concat", "greaselm"]


@dataclass
class FusionSettings:
    mode: Mode = "joint"
    fusion: Fusion = "concat"
    kg_holdout: float = 0.15
    kg_negatives: int = 4
    kg_max_edges: int = 512
    align_dim: int = 64
    temperature: float = 0.1
    dropout: float = 0.1


def _head(dim: int, hidden: int, labels: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, labels))


class FusionModel(nn.Module):
    def __init__(
        self,
        settings: FusionSettings,
        num_labels: int,
        lm: nn.Module | None = None,
        graph: GraphEncoder | None = None,
    ):
        super().__init__()
        s = self.settings = settings
        self.lm = lm if s.mode != "kg" else None
        self.graph = graph if s.mode != "lm" else None
        if self.lm is None and self.graph is None:
            raise ValueError("a fusion model needs a language model or a graph encoder")
        if s.mode != "kg" and lm is None:
            raise ValueError(f"mode {s.mode!r} needs a language model")
        if s.mode != "lm" and graph is None:
            raise ValueError(f"mode {s.mode!r} needs a graph encoder")
        h = int(lm.config.hidden_size) if self.lm is not None else 0  # type: ignore[union-attr]
        d = self.graph.dim if self.graph is not None else 0
        self.greaselm = s.mode == "joint" and s.fusion == "greaselm"
        if self.greaselm:
            assert self.lm is not None and self.graph is not None
            n_lm = len(self.lm.encoder.layer)  # type: ignore[union-attr]
            if self.graph.num_layers > n_lm:
                raise ValueError(f"GreaseLM fusion needs at most {n_lm} GNN layers (one per top LM layer)")
            self.context = nn.Parameter(torch.randn(d) * d**-0.5)
            self.mint = nn.ModuleList(
                nn.Sequential(nn.Linear(h + d, h + d), nn.GELU(), nn.Linear(h + d, h + d))
                for _ in range(self.graph.num_layers)
            )
            width = h + 2 * d
        else:
            width = h + d
        self.classifier = _head(width, max(width // 2, 32), num_labels, s.dropout)
        if self.graph is not None:
            self.kg_relation = nn.Embedding(self.graph.num_relations, d)
            nn.init.ones_(self.kg_relation.weight)
        if s.mode == "joint":
            self.align_text = nn.Linear(h, s.align_dim)
            self.align_kg = nn.Linear(d, s.align_dim)

    # -- graph pieces ------------------------------------------------------------------------
    def _message_edges(self, batch: dict[str, Any], num_graphs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edges for message passing (facts both ways, context edges) and the held-out facts ``(k, 3)``."""
        assert self.graph is not None
        ei, et = batch["edge_index"], batch["edge_type"]
        keep = torch.ones(len(et), dtype=torch.bool, device=et.device)
        held = torch.zeros(0, 3, dtype=torch.int64, device=et.device)
        if self.training and self.settings.kg_holdout > 0 and len(et):
            out = torch.rand(len(et), device=et.device) < self.settings.kg_holdout
            idx = out.nonzero().flatten()[: self.settings.kg_max_edges]
            keep[idx] = False
            held = torch.stack([ei[0, idx], et[idx], ei[1, idx]], dim=1)
        ei, et = ei[:, keep], et[keep]
        R = self.graph.num_relations
        src, dst, types = [ei[0], ei[1]], [ei[1], ei[0]], [et, et + R]
        if self.greaselm:
            n = len(batch["node_ids"])
            ctx = n + batch["seed_batch"]
            seeds = batch["seed_index"]
            src += [ctx, seeds]
            dst += [seeds, ctx]
            types += [torch.full_like(seeds, 2 * R), torch.full_like(seeds, 2 * R + 1)]
        return torch.stack([torch.cat(src), torch.cat(dst)]), torch.cat(types), held

    def _pool_seeds(self, x: torch.Tensor, batch: dict[str, Any], num_graphs: int) -> torch.Tensor:
        seeds = batch["seed_index"]
        return scatter(x[seeds], batch["seed_batch"], dim=0, dim_size=num_graphs, reduce="mean")

    def kg_loss(self, x: torch.Tensor, held: torch.Tensor, num_nodes: int) -> torch.Tensor:
        """DistMult link prediction of the held-out facts against random corrupted tails."""
        if not len(held):
            return x.sum() * 0.0
        h, r, t = x[held[:, 0]], self.kg_relation(held[:, 1]), x[held[:, 2]]
        pos = (h * r * t).sum(-1)
        k = self.settings.kg_negatives
        neg_t = x[torch.randint(0, num_nodes, (len(held), k), device=x.device)]
        neg = ((h * r).unsqueeze(1) * neg_t).sum(-1)
        return F.softplus(-pos).mean() + F.softplus(neg).mean()

    def align_loss(self, tokens: torch.Tensor, x: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """InfoNCE between mention token means and their entities' node states."""
        mb = batch["mention_batch"]
        if len(mb) < 2:
            return tokens.sum() * 0.0 + x.sum() * 0.0
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        span = (pos >= batch["mention_start"][:, None]) & (pos < batch["mention_end"][:, None])
        span = span.unsqueeze(-1).to(tokens.dtype)
        text = (tokens[mb] * span).sum(1) / span.sum(1).clamp_min(1)
        q = F.normalize(self.align_text(text.float()), dim=-1)
        k = F.normalize(self.align_kg(x[batch["mention_node"]]), dim=-1)
        logits = q @ k.T / self.settings.temperature
        ent = batch["node_ids"][batch["mention_node"]]
        same = (ent[:, None] == ent[None, :]) & ~torch.eye(len(ent), dtype=torch.bool, device=ent.device)
        logits = logits.masked_fill(same, float("-inf"))
        target = torch.arange(len(ent), device=ent.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    # -- forward -----------------------------------------------------------------------------
    def forward(self, **batch: Any) -> dict[str, torch.Tensor]:
        """``logits``; while training also ``kg_loss`` and ``align_loss`` (for the parts that exist)."""
        num_graphs = len(batch["labels"])
        out: dict[str, torch.Tensor] = {}
        parts: list[torch.Tensor] = []
        x = held = None
        if self.graph is not None:
            ei, et, held = self._message_edges(batch, num_graphs)
            x = self.graph.features(batch["node_ids"])
        if self.lm is not None:
            mask = batch["attention_mask"]
            if self.greaselm:
                assert x is not None
                x = torch.cat([x, self.context.expand(num_graphs, -1)])
                tokens, x = self._greaselm(batch, x, ei, et)
                n = len(batch["node_ids"])
                parts += [tokens[:, 0], x[n:]]
                x = x[:n]
            else:
                tokens = self.lm(**model_inputs(batch)).last_hidden_state
                m = mask.unsqueeze(-1).to(tokens.dtype)
                parts.append((tokens * m).sum(1) / m.sum(1).clamp_min(1))
        if x is not None and not self.greaselm:
            x = self.graph(x, ei, et)  # type: ignore[misc]
        if x is not None:
            parts.append(self._pool_seeds(x, batch, num_graphs))
        out["logits"] = self.classifier(torch.cat([p.float() for p in parts], dim=-1))
        if self.training and x is not None:
            out["kg_loss"] = self.kg_loss(x, held, len(batch["node_ids"]))  # type: ignore[arg-type]
            if self.lm is not None:
                out["align_loss"] = self.align_loss(tokens, x, batch)
        return out

    def _greaselm(
        self, batch: dict[str, Any], x: torch.Tensor, ei: torch.Tensor, et: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the LM with one GNN layer and one interaction MLP after each of its top M layers."""
        assert self.lm is not None and self.graph is not None
        layers = self.lm.encoder.layer  # type: ignore[union-attr]
        m = self.graph.num_layers
        first = len(layers) - m
        h_dim = int(self.lm.config.hidden_size)  # type: ignore[union-attr]
        num_graphs = len(batch["labels"])
        state = {"x": x}

        def hook(i: int):
            def fuse(module: nn.Module, args: Any, output: Any) -> Any:
                hidden = output[0] if isinstance(output, tuple) else output
                k = i - first
                xs = self.graph.layer(k, state["x"], ei, et)  # type: ignore[union-attr]
                ctx = xs[-num_graphs:]
                mixed = self.mint[k](torch.cat([hidden[:, 0].float(), ctx], dim=-1))
                d_int, d_ctx = mixed.split([h_dim, ctx.shape[1]], dim=-1)
                hidden = torch.cat([(hidden[:, 0] + d_int.to(hidden.dtype)).unsqueeze(1), hidden[:, 1:]], dim=1)
                state["x"] = torch.cat([xs[:-num_graphs], ctx + d_ctx])
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

            return fuse

        handles = [layers[i].register_forward_hook(hook(i)) for i in range(first, len(layers))]
        try:
            tokens = self.lm(**model_inputs(batch)).last_hidden_state
        finally:
            for handle in handles:
                handle.remove()
        return tokens, state["x"]


__all__ = ["Fusion", "FusionModel", "FusionSettings", "Mode"]
