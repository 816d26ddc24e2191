"""The two question-answering models: an LM-only bi-encoder and a KG-enhanced relation follower.

Both read a question through the same `QuestionEncoder`: the token states of a Hugging Face
encoder (MiniLM, or a tiny BERT built from scratch), either fine-tuned inside the model or, with a
frozen encoder, computed once by the task and handed in as ``qtok``/``qmask``; a summary vector
(an MLP over the mean-pooled states) and the projected token states.

- `LMQAModel` scores every entity of the graph by the cosine of the question vector (summary plus
  an attention read of the tokens) with the entity's vector: a projection of the entity name's
  (fixed) text embedding plus a learnt per-entity offset. It never sees a fact.
- `KGQAModel` follows relations in the topic entity's subgraph (NSM/TransferNet-style): a score
  starts at 1 on the topic node; at hop k an instruction is read from the question's tokens by
  attention, with a query made from the previous hop's instruction and the summary (so successive
  hops read successive relation phrases); the instruction weighs every relation (and inverse
  relation) by a softmax against the relation's key (its name's text vector, projected, plus a
  learnt offset), and each node passes its score along its facts scaled by their relation's
  weight (`RelationFollow`, a torch_geometric ``MessagePassing`` layer). A node's answer mass is a
  mix of its scores after 1..hops hops, weighted by a learnt hop distribution predicted from the
  question, and its logit the log of that mass (relative to the question's largest), so the answer
  distribution is the normalised mass. `KGQAModel.reason` also returns the per-hop scores and
  relation weights, from which `kelm.kgqa.evidence` reads the path the propagation followed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter

from kelm.lm.batching import encode_inputs, model_inputs
from kelm.lm.encoding import encode_texts

#: Share of each hop's relation attention spread evenly over all relations.
LEAK = 1e-3


def token_states(
    encoder: nn.Module, tokenizer: Any, texts: list[str], max_length: int, batch: int = 128
) -> list[torch.Tensor]:
    """Each text's token states from ``encoder`` (``(tokens, hidden)``, float32, on CPU), unpadded."""
    samples, _ = encode_texts(tokenizer, texts, max_length)
    out: list[torch.Tensor] = []
    with torch.no_grad():
        for lo in range(0, len(samples), batch):
            part = samples[lo : lo + batch]
            hidden = encoder(**encode_inputs(part, tokenizer.pad_token_id)).last_hidden_state.float()
            out += [h[: len(s["input_ids"])].clone() for h, s in zip(hidden, part, strict=True)]
    return out


def pad_states(states: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``qtok`` (questions, tokens, hidden) zero-padded, and ``qmask`` (1 on real tokens)."""
    qtok = nn.utils.rnn.pad_sequence(states, batch_first=True)
    lengths = torch.tensor([len(s) for s in states])
    return {"qtok": qtok, "qmask": (torch.arange(qtok.shape[1]) < lengths[:, None]).long()}


def attend(query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention of one query per question over its tokens: ``(B, D)``."""
    scores = torch.einsum("bd,btd->bt", query, keys) * keys.shape[-1] ** -0.5
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return torch.einsum("bt,btd->bd", weights, keys)


class QuestionEncoder(nn.Module):
    """A question → its summary vector (an MLP over the mean-pooled states) and its projected token
    states with their mask. States come from a fine-tuned encoder, or precomputed as ``qtok``/``qmask``."""

    def __init__(self, encoder: nn.Module | None, q_dim: int, dim: int):
        super().__init__()
        self.encoder = encoder
        self.mlp = nn.Sequential(nn.Linear(q_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.tokens = nn.Linear(q_dim, dim)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.encoder is not None:
            hidden, mask = self.encoder(**model_inputs(batch)).last_hidden_state, batch["attention_mask"]
        else:
            hidden, mask = batch["qtok"], batch["qmask"]
        hidden = hidden.float()
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.mlp(pooled), self.tokens(hidden), mask.bool()


class LMQAModel(nn.Module):
    """Bi-encoder over all entities: no graph structure. The question vector is its summary plus an
    attention read of its tokens, the same question reader the KG-enhanced model has."""

    def __init__(self, encoder: nn.Module | None, q_dim: int, dim: int, entity_text: torch.Tensor):
        super().__init__()
        self.question = QuestionEncoder(encoder, q_dim, dim)
        self.query = nn.Linear(dim, dim)
        self.register_buffer("entity_text", entity_text.float())
        self.entity_proj = nn.Linear(q_dim, dim)
        self.entity_emb = nn.Embedding(len(entity_text), dim)
        nn.init.normal_(self.entity_emb.weight, std=0.02)
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, **batch: Any) -> torch.Tensor:
        """Logits over every entity, ``(questions, entities)``; the topic entity is masked out."""
        summary, tokens, mask = self.question(batch)
        q = F.normalize(summary + attend(self.query(summary), tokens, mask), dim=-1)
        ents = F.normalize(self.entity_proj(self.entity_text) + self.entity_emb.weight, dim=-1)
        logits = self.scale * q @ ents.T
        rows = torch.arange(len(logits), device=logits.device)
        return logits.index_put((rows, batch["topic"]), torch.tensor(-1e4, device=logits.device))


class RelationFollow(MessagePassing):
    """Pass each node's score along its edges, scaled by the edge's weight; sum at the target."""

    def __init__(self) -> None:
        super().__init__(aggr="add")

    def forward(self, score: torch.Tensor, edge_index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.propagate(edge_index, x=score.unsqueeze(-1), weight=weight).squeeze(-1)

    def message(self, x_j: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x_j * weight.unsqueeze(-1)


@dataclass
class Reasoning:
    """One forward pass of `KGQAModel`: each node's score after every hop ``(hops, nodes)``, each
    hop's relation attention ``(hops, questions, 2R)``, the hop mix ``(questions, hops)`` and the
    logits per node."""

    scores: torch.Tensor
    attention: torch.Tensor
    mix: torch.Tensor
    logits: torch.Tensor


class KGQAModel(nn.Module):
    """Question-conditioned relation following over the topic entity's subgraph (NSM/TransferNet-style)."""

    def __init__(
        self,
        encoder: nn.Module | None,
        q_dim: int,
        dim: int,
        num_relations: int,
        hops: int = 3,
        relation_text: torch.Tensor | None = None,
    ):
        super().__init__()
        self.hops = hops
        self.question = QuestionEncoder(encoder, q_dim, dim)
        # hop k's query over the question's tokens, from the previous hop's instruction and the summary
        self.step = nn.ModuleList(nn.Linear(2 * dim, dim) for _ in range(hops))
        self.instruction = nn.Linear(dim, dim)
        # a relation's key: its name's text vector (r, then "inverse r"), projected, plus a learnt offset
        if relation_text is None:
            relation_text = torch.zeros(2 * num_relations, q_dim)
        self.register_buffer("relation_text", relation_text.float())
        self.relation_proj = nn.Linear(q_dim, dim)
        self.relations = nn.Embedding(2 * num_relations, dim)
        nn.init.normal_(self.relations.weight, std=dim**-0.5)
        self.hop_attention = nn.Linear(dim, hops)
        self.follow = RelationFollow()
        self.floor = 1e-6  # relative mass of nodes the question's relations do not reach

    def instructions(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each hop's relation attention ``(hops, questions, 2R)`` and the hop mix ``(questions, hops)``."""
        summary, tokens, mask = self.question(batch)
        keys = self.relation_proj(self.relation_text) + self.relations.weight
        instruction = torch.zeros_like(summary)
        attention = []
        for step in self.step:
            instruction = attend(step(torch.cat([instruction, summary], -1)), tokens, mask)
            # a small share spread over all relations keeps every reachable node's mass above 0
            weights = (self.instruction(instruction) @ keys.T).softmax(-1)
            attention.append((1 - LEAK) * weights + LEAK / len(keys))
        return torch.stack(attention), self.hop_attention(summary).softmax(-1)

    def reason(self, **batch: Any) -> Reasoning:
        """Scores spread from the topic node along the attended relations, hop by hop."""
        attention, mix = self.instructions(batch)
        node_batch, edge_index, edge_type = batch["node_batch"], batch["edge_index"], batch["edge_type"]
        edge_key = node_batch[edge_index[0]] * attention.shape[-1] + edge_type  # (question, relation) per edge
        score = torch.zeros(len(node_batch), device=node_batch.device)
        score[batch["topic_pos"]] = 1.0
        reached = []
        for hop in range(self.hops):
            score = self.follow(score, edge_index, attention[hop].reshape(-1)[edge_key])
            reached.append(score)
        scores = torch.stack(reached)
        mass = (scores.T * mix[node_batch]).sum(-1)
        # log of the mass relative to the question's largest: the softmax over a subgraph is the mass, normalised
        peak = scatter(mass.detach(), node_batch, 0, dim_size=len(batch["topic_pos"]), reduce="max")
        logits = torch.log(mass / peak.clamp(min=1e-20)[node_batch] + self.floor)
        logits = logits.index_put((batch["topic_pos"],), torch.tensor(-1e4, device=logits.device))
        return Reasoning(scores, attention, mix, logits)

    def forward(self, **batch: Any) -> torch.Tensor:
        """A logit per subgraph node (all questions' subgraphs concatenated); topic nodes masked out."""
        return self.reason(**batch).logits


def segment_log_softmax(logits: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Log-softmax of ``logits`` within each group ``index`` (0..size-1)."""
    peak = scatter(logits.detach(), index, 0, dim_size=size, reduce="max")
    shifted = logits - peak[index]
    total = scatter(shifted.exp(), index, 0, dim_size=size, reduce="sum")
    return shifted - total.log()[index]
