"""Answer questions with a trained model folder: answers, scores and evidence paths."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kelm.errors import DataError
from kelm.kgqa.evidence import Triple, evidence_paths, followed_paths
from kelm.kgqa.graph import QAGraph
from kelm.kgqa.metrics import answer_set
from kelm.kgqa.questions import Question, find_topic

NO_ENTITY = "no entity found"


@dataclass
class Answer:
    name: str
    id: str
    score: float
    evidence: list[list[Triple]]


@dataclass
class Response:
    question: str
    topic: str | None
    answers: list[Answer] = field(default_factory=list)
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "topic": self.topic,
            "message": self.message,
            "answers": [
                {"name": a.name, "id": a.id, "score": a.score, "evidence": [[list(t) for t in p] for p in a.evidence]}
                for a in self.answers
            ],
        }


class QAModel:
    """A trained ``kgqa`` run loaded for inference."""

    def __init__(self, path: str | Path):
        from kelm.artifacts import read_model_spec
        from kelm.kgqa.batching import QA_FILE, build_qa_model
        from kelm.lm.hf import load_tokenizer
        from kelm.train.export import load_weights

        folder, self.spec = read_model_spec(path, "kgqa")
        self.graph = QAGraph.load(folder)
        try:
            self.threshold = float(json.loads((folder / QA_FILE).read_text(encoding="utf-8"))["threshold"])
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"cannot read the answer threshold ({err})", folder / QA_FILE) from None
        self.tokenizer = load_tokenizer(self.spec["encoder"])
        self.model = load_weights(build_qa_model(self.spec), folder).eval()

    def _batch(self, text: str, topic: int) -> dict[str, Any]:
        from kelm.kgqa.batching import SubgraphTensors, collate_subgraphs
        from kelm.kgqa.models import pad_states, token_states
        from kelm.lm.batching import encode_inputs
        from kelm.lm.encoding import encode_texts, reference_encoder

        s = self.spec
        batch: dict[str, Any]
        if s["finetune_encoder"]:
            batch = encode_inputs(encode_texts(self.tokenizer, [text], s["max_length"])[0], self.tokenizer.pad_token_id)
        else:
            sizes = {k: s[k] for k in ("hidden_size", "num_layers", "num_heads")}
            enc = reference_encoder(s["encoder"], self.tokenizer, sizes)
            batch = pad_states(token_states(enc, self.tokenizer, [text], s["max_length"]))
        batch["topic"] = torch.tensor([topic])
        if s["model"] == "kg":
            sub = self.graph.subgraph(topic, s["subgraph_hops"], s["fanout"], s["max_nodes"])
            batch.update(collate_subgraphs([SubgraphTensors.of(sub, self.graph.num_relations)]))
        return batch

    @torch.no_grad()
    def ask(self, question: str, top: int = 10, paths: int = 3) -> Response:
        """Answers above the model's threshold (at most ``top``), each with up to ``paths`` evidence paths."""
        name = find_topic(question)
        topic = self.graph.find(name) if name is not None else None
        if topic is None:
            why = "no [entity] in the question" if name is None else f"'{name}' is not an entity of the graph"
            return Response(question, name, message=f"{NO_ENTITY}: {why}")
        q = Question(question, name or "", ())
        text = q.masked("the entity") if self.spec["mask_topic"] else question.replace("[", "").replace("]", "")
        batch = self._batch(text, topic)
        tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        if self.spec["model"] == "lm":
            logits = self.model(**tensors).float()
            cand, scores = list(range(logits.shape[1])), logits[0]
        else:
            reasoning = self.model.reason(**tensors)
            cand, scores = batch["nodes"].tolist(), reasoning.logits.float()
        probs = scores.softmax(-1).tolist()
        keep = [j for j, c in enumerate(cand) if c != topic]
        chosen = answer_set([cand[j] for j in keep], [probs[j] for j in keep], self.threshold)[:top]
        prob_of = dict(zip(cand, probs, strict=True))
        if self.spec["model"] == "lm":
            evidence = {a: evidence_paths(self.graph, topic, a, 3, None, paths) for a in chosen}
        else:
            evidence = self._followed(batch, reasoning, chosen, paths)
        answers = [Answer(self.graph.names[a], self.graph.ids[a], prob_of[a], evidence[a]) for a in chosen]
        return Response(question, self.graph.names[topic], answers)

    def _followed(
        self, batch: dict[str, Any], reasoning: Any, chosen: list[int], limit: int
    ) -> dict[int, list[list[Triple]]]:
        """Per chosen answer, the paths the model's score followed at the hop that gave it most mass."""
        nodes = batch["nodes"].tolist()
        position = {g: j for j, g in enumerate(nodes)}
        src, dst = batch["edge_index"].tolist()
        edges = list(zip(src, batch["edge_type"].tolist(), dst, strict=True))
        attention, mix = reasoning.attention[:, 0], reasoning.mix[0]
        out = {}
        for a in chosen:
            p = position[a]
            hop = int((reasoning.scores[:, p] * mix).argmax()) + 1
            out[a] = followed_paths(self.graph, nodes, edges, reasoning.scores, attention, hop, p, limit)
        return out
