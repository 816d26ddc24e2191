"""What the server runs: one service per loaded run folder, by model kind.

A service turns a batch of requests into a batch of answers (``run``) and says what one request
costs in tokens (``tokens``); the `DynamicBatcher` in front of it groups requests. Services never
touch HTTP: `kelm.app.serve.app` maps routes onto them.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kelm.errors import DataError, KelmError


class UnknownName(KelmError):
    """An entity or relation the model does not know; ``suggestions`` are the nearest names."""

    def __init__(self, what: str, name: str, suggestions: list[str]):
        hint = f" (did you mean {', '.join(repr(s) for s in suggestions)}?)" if suggestions else ""
        super().__init__(f"unknown {what} '{name}'{hint}")
        self.suggestions = suggestions


#: Capabilities a service can offer, each served by one route.
CAPABILITIES = ("classify", "ner", "qa", "embeddings", "link-prediction", "extract", "ask", "link")


class Service:
    """A loaded model: its name (the folder's), its kind and what it can do."""

    capabilities: tuple[str, ...] = ()

    def __init__(self, name: str, kind: str):
        self.name, self.kind = name, kind

    def tokens(self, capability: str, item: Any) -> int:
        return 1

    def run(self, capability: str, items: list[Any]) -> list[Any]:
        raise NotImplementedError


class HFService(Service):
    """A fine-tuned Hugging Face model: classification, NER or span QA by its head, and embeddings
    (the encoder's mean-pooled, L2-normalised last layer) for every head."""

    def __init__(self, name: str, folder: Path):
        from kelm.lm.hf import load_finetuned

        super().__init__(name, "hf")
        self.model, self.tokenizer, self.spec = load_finetuned(folder)
        self.head = self.spec["head"]
        self.max_length = int(self.spec.get("max_length", 512))
        own = {"classification": "classify", "ner": "ner", "qa": "qa"}.get(self.head)
        self.capabilities = ((own,) if own else ()) + ("embeddings",)

    def tokens(self, capability: str, item: Any) -> int:
        """An estimate (words × 1.3 + 2), cheap enough for the event loop; the batch is cut by it."""
        text = " ".join(item) if isinstance(item, list) else item if isinstance(item, str) else " ".join(item[:2])
        return min(int(len(text.split()) * 1.3) + 2, self.max_length)

    @torch.no_grad()
    def run(self, capability: str, items: list[Any]) -> list[Any]:
        if capability == "classify":
            from kelm.tasks.classification import classify

            return classify(self.model, self.tokenizer, items, self.max_length, batch_size=len(items))
        if capability == "ner":
            from kelm.tasks.ner import entities, tag_sentences

            tags = tag_sentences(self.model, self.tokenizer, items, self.max_length)
            return [(t, entities(words, t)) for words, t in zip(items, tags, strict=True)]
        if capability == "qa":
            from kelm.tasks.qa import QAExample, answer_questions

            examples = [QAExample(str(i), q, c, []) for i, (q, c) in enumerate(items)]
            return answer_questions(self.model, self.tokenizer, examples, self.spec)
        if capability == "embeddings":
            return self._embed(items)
        raise KelmError(f"model '{self.name}' cannot {capability}")

    def _embed(self, texts: list[str]) -> list[list[float]]:
        from kelm.lm.batching import encode_inputs
        from kelm.tasks.classification import encode_texts

        samples, _ = encode_texts(self.tokenizer, texts, self.max_length)
        batch = encode_inputs(samples, self.tokenizer.pad_token_id)
        hidden = self.model.base_model(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(pooled, dim=-1).tolist()


@dataclass(frozen=True)
class Ranked:
    """One answer of link prediction: the entity, its score and rank, and why (known fact, paths)."""

    rank: int
    id: str
    label: str
    score: float
    known: bool
    paths: list[list[tuple[str, str, str]]]


class KGEService(Service):
    """A link-prediction model: the top-k tails of (head, relation, ?) or heads of (?, relation,
    tail); with a store, each answer says whether it is a known fact and the shortest fact paths
    (at most 3 hops) linking it to the query's entity."""

    capabilities = ("link-prediction",)

    def __init__(self, name: str, folder: Path, graph: Any | None = None):
        from kelm.kg.vocab import ENTITIES_FILE, RELATIONS_FILE, read_vocab
        from kelm.kge.folder import load_kge

        super().__init__(name, "kge")
        model_dir = folder / "model" if (folder / "model").is_dir() else folder
        self.model, _ = load_kge(model_dir)
        self.ent_ids, self.ent_labels = read_vocab(model_dir / ENTITIES_FILE)
        self.rel_ids, self.rel_labels = read_vocab(model_dir / RELATIONS_FILE)
        self.ent_index = _index(self.ent_ids, self.ent_labels)
        self.rel_index = _index(self.rel_ids, self.rel_labels)
        self.graph = graph

    def entity(self, name: str) -> int:
        return _find(name, self.ent_index, "entity")

    def relation(self, name: str) -> int:
        return _find(name, self.rel_index, "relation")

    @torch.no_grad()
    def run(self, capability: str, items: list[Any]) -> list[Any]:
        """Items are ``(entity index, relation index, "tail" | "head", k)``."""
        out: list[list[Ranked]] = []
        for direction in ("tail", "head"):
            rows = [i for i, it in enumerate(items) if it[2] == direction]
            if not rows:
                continue
            e = torch.tensor([items[i][0] for i in rows])
            r = torch.tensor([items[i][1] for i in rows])
            scores = self.model("score_t", e, r) if direction == "tail" else self.model("score_h", r, e)
            for row, s in zip(rows, scores.float(), strict=True):
                k = min(items[row][3], len(self.ent_ids))
                values, order = s.topk(k)
                out.append((row, self._ranked(items[row], order.tolist(), values.tolist())))  # type: ignore[arg-type]
        return [answers for _, answers in sorted(out, key=lambda x: x[0])]  # type: ignore[index]

    def _ranked(self, item: tuple[int, int, str, int], order: list[int], values: list[float]) -> list[Ranked]:
        e, r, direction, _ = item
        found = []
        for rank, (k, v) in enumerate(zip(order, values, strict=True), start=1):
            triple = (self.ent_ids[e], self.rel_ids[r], self.ent_ids[k])
            if direction == "head":
                triple = (self.ent_ids[k], self.rel_ids[r], self.ent_ids[e])
            known, paths = self._evidence(triple, self.ent_ids[e], self.ent_ids[k])
            found.append(Ranked(rank, self.ent_ids[k], self.ent_labels[k], float(v), known, paths))
        return found

    def _evidence(self, triple: tuple[str, str, str], query: str, answer: str) -> tuple[bool, list]:
        if self.graph is None:
            return False, []
        from kelm.kgqa.evidence import evidence_paths

        g = self.graph
        if query not in g.by_id or answer not in g.by_id:
            return False, []
        h, r, t = triple
        known = r in g.rel_index and (g.by_id[h], g.rel_index[r], g.by_id[t]) in g.triple_set
        paths = evidence_paths(g.qa, g.by_id[query], g.by_id[answer], limit=3)
        return known, [[(g.id_of[a], g.rel_id_of[b], g.id_of[c]) for a, b, c in p] for p in paths]


class EvidenceGraph:
    """A store's facts in memory, for evidence paths (`kelm.kgqa.evidence`) by entity id."""

    def __init__(self, qa: Any):
        self.qa = qa
        self.by_id = qa.by_id
        self.rel_index = {r: i for i, r in enumerate(qa.rel_ids)}
        self.triple_set = set(qa.triples)
        self.id_of = dict(zip(qa.names, qa.ids, strict=True))
        self.rel_id_of = dict(zip(qa.rel_names, qa.rel_ids, strict=True))

    @classmethod
    def from_graph(cls, kg: Any) -> EvidenceGraph:
        from kelm.kgqa.graph import QAGraph

        return cls(QAGraph.from_kg(kg))


def _index(ids: Sequence[str], labels: Sequence[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, label in enumerate(labels):
        index.setdefault(label, i)
    index.update({e: i for i, e in enumerate(ids)})  # ids win over labels
    return index


def _find(name: str, index: dict[str, int], what: str) -> int:
    if name in index:
        return index[name]
    raise UnknownName(what, name, difflib.get_close_matches(name, list(index), n=3, cutoff=0.6))


class ExtractorService(Service):
    """A trained extractor: mentions and relations with character spans."""

    capabilities = ("extract",)

    def __init__(self, name: str, folder: Path):
        from kelm.extract.extractor import Extractor

        super().__init__(name, "extractor")
        self.extractor = Extractor.from_pretrained(folder)

    def tokens(self, capability: str, item: Any) -> int:
        return max(1, len(item) // 4)

    def run(self, capability: str, items: list[Any]) -> list[Any]:
        return [self.extractor.extract(text) for text in items]


class KGQAService(Service):
    """A trained KGQA run: answers to a question about a ``[bracketed]`` entity, with evidence paths."""

    capabilities = ("ask",)

    def __init__(self, name: str, folder: Path):
        from kelm.kgqa.answer import QAModel

        super().__init__(name, "kgqa")
        self.model = QAModel(folder)

    def run(self, capability: str, items: list[Any]) -> list[Any]:
        """Items are ``(question, top, paths)``."""
        return [self.model.ask(q, top=top, paths=paths) for q, top, paths in items]


class LinkerService(Service):
    """Entity linking against the store: the dictionary stage of `kelm.linking.EntityLinker`
    (labels, and ids read with ``_`` as spaces)."""

    capabilities = ("link",)

    def __init__(self, kg: Any):
        from kelm.linking.linker import EntityLinker

        super().__init__("store-linker", "linker")
        self.linker = EntityLinker.from_kg(kg)
        self.labels = {e.id: e.label for e in kg.entities.values()}

    def run(self, capability: str, items: list[Any]) -> list[Any]:
        return self.linker.link_many(items)


def load_service(path: str | Path, graph: Any | None = None) -> Service:
    """The service of a run folder, by the kind its ``[model]`` table names."""
    from kelm.app.models import model_kind

    folder = Path(path)
    kind = model_kind(folder)
    name = folder.resolve().name if folder.name != "model" else folder.resolve().parent.name
    if kind in ("hf", "moe-hf"):
        return HFService(name, folder)
    if kind == "kge":
        return KGEService(name, folder, graph)
    if kind == "extractor":
        return ExtractorService(name, folder)
    if kind == "kgqa":
        return KGQAService(name, folder)
    raise DataError(f"model kind '{kind}' cannot be served yet (served: hf, moe-hf, kge, kgqa, extractor)", folder)
