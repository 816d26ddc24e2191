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

    def describe(self) -> dict[str, Any]:
        """More about the model for `/v1/models` (a link predictor lists its relations)."""
        return {}

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

            found = classify(self.model, self.tokenizer, items, self.max_length, batch_size=len(items))
            return [{"label": label, "probability": p} for label, p in found]
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
    rules: list[dict[str, Any]] | None = None  # a rules model's: the rules that predict it, with paths


class LinkPredictionService(Service):
    """A link-prediction model (KGE, text KGC, frozen-text KGC or their hybrid): the top-k tails of
    (head, relation, ?) or heads of (?, relation, tail); with a store, each answer says whether it
    is a known fact and the shortest fact paths (at most 3 hops) linking it to the query's entity."""

    capabilities = ("link-prediction",)

    def __init__(self, name: str, kind: str, model: LinkPredictor, graph: EvidenceGraph | None = None):
        super().__init__(name, kind)
        self.scoring = model.scoring
        self.ent_ids, self.ent_labels = model.entity_ids, model.entity_labels
        self.rel_ids, self.rel_labels = model.relation_ids, model.relation_labels
        self.ent_index = _index(self.ent_ids, self.ent_labels)
        self.rel_index = _index(self.rel_ids, self.rel_labels)
        self.graph = graph
        self.explainer = model.explain

    def attach(self, kg: Any, graph: EvidenceGraph) -> None:
        """Draw evidence (known facts, paths) from ``graph``: the store's, now and after each write."""
        self.graph = graph

    def entity(self, name: str) -> int:
        return _find(name, self.ent_index, "entity")

    def relation(self, name: str) -> int:
        return _find(name, self.rel_index, "relation")

    def describe(self) -> dict[str, Any]:
        """The relations it ranks for (id and label), for clients that offer a choice."""
        return {"relations": [{"id": i, "label": lab} for i, lab in zip(self.rel_ids, self.rel_labels, strict=True)]}

    @torch.no_grad()
    def run(self, capability: str, items: list[Any]) -> list[Any]:
        """Items are ``(entity index, relation index, "tail" | "head", k)``."""
        out: list[tuple[int, list[Ranked]]] = []
        for direction in ("tail", "head"):
            rows = [i for i, it in enumerate(items) if it[2] == direction]
            if not rows:
                continue
            e = torch.tensor([items[i][0] for i in rows])
            r = torch.tensor([items[i][1] for i in rows])
            scores = self.scoring.score_t(e, r) if direction == "tail" else self.scoring.score_h(r, e)
            for row, s in zip(rows, scores.float(), strict=True):
                k = min(items[row][3], len(self.ent_ids))
                values, order = s.topk(k)
                out.append((row, self._ranked(items[row], order.tolist(), values.tolist())))
        return [answers for _, answers in sorted(out, key=lambda x: x[0])]

    def _ranked(self, item: tuple[int, int, str, int], order: list[int], values: list[float]) -> list[Ranked]:
        e, r, direction, _ = item
        found = []
        why = self.explainer(e, r, direction, order) if self.explainer is not None else [None] * len(order)
        for rank, (k, v, rules) in enumerate(zip(order, values, why, strict=True), start=1):
            triple = (self.ent_ids[e], self.rel_ids[r], self.ent_ids[k])
            if direction == "head":
                triple = (self.ent_ids[k], self.rel_ids[r], self.ent_ids[e])
            known, paths = self._evidence(triple, self.ent_ids[e], self.ent_ids[k])
            found.append(Ranked(rank, self.ent_ids[k], self.ent_labels[k], float(v), known, paths, rules))
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
        return known, [g.path_ids(p) for p in paths]


@dataclass(frozen=True)
class LinkPredictor:
    """What a link-prediction service needs of a run folder: its scoring and vocabularies, and for
    a rules model ``explain(entity, relation, side, answers)``: per answer, the rules behind it."""

    scoring: Any
    entity_ids: list[str]
    entity_labels: list[str]
    relation_ids: list[str]
    relation_labels: list[str]
    explain: Any = None

    @classmethod
    def load(cls, folder: Path, kind: str) -> LinkPredictor:
        """The scoring of a ``kge``, ``text-kgc``, ``frozen-text-kgc``, ``hybrid`` or ``rules`` folder."""
        if kind == "rules":
            from kelm.reason.model import load_reasoner

            m = load_reasoner(folder)
            return cls(m.scoring, m.entity_ids, m.entity_labels, m.relation_ids, m.relation_labels, m.explain)
        if kind == "kge":
            from kelm.kg.vocab import ENTITIES_FILE, RELATIONS_FILE, read_vocab
            from kelm.kge.folder import load_kge
            from kelm.kge.scorer import Scoring

            model_dir = folder / "model" if (folder / "model").is_dir() else folder
            model, spec = load_kge(model_dir)
            ent_ids, ent_labels = read_vocab(model_dir / ENTITIES_FILE)
            rel_ids, rel_labels = read_vocab(model_dir / RELATIONS_FILE)
            scoring = Scoring(model, len(ent_ids), len(rel_ids), int(spec.get("dim", 0)))
            return cls(scoring, ent_ids, ent_labels, rel_ids, rel_labels)
        if kind == "hybrid":
            from kelm.kgc.hybrid_fit import load_hybrid

            scoring, text = load_hybrid(folder)
        elif kind == "frozen-text-kgc":
            from kelm.kgc.frozen_text import load_frozen_text

            text = load_frozen_text(folder)
            scoring = text.scoring()
        else:
            from kelm.kgc.text_kgc import load_text_kgc

            text = load_text_kgc(folder)
            scoring = text.scoring()
        return cls(scoring, text.entity_ids, text.entity_labels, text.relation_ids, text.relation_labels)


class EvidenceGraph:
    """A store's facts in memory, for evidence paths (`kelm.kgqa.evidence`) by entity id."""

    def __init__(self, qa: Any):
        self.qa = qa
        self.by_id = qa.by_id
        self.rel_index = {r: i for i, r in enumerate(qa.rel_ids)}
        self.triple_set = set(qa.triples)
        self.by_name = qa.by_name
        self.rels_named: dict[str, list[int]] = {}
        for i, name in enumerate(qa.rel_names):
            self.rels_named.setdefault(name, []).append(i)

    def path_ids(self, path: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """A path of name triples (`kelm.kgqa.evidence`) as id triples; of two relations with one
        name, the one whose fact it is."""
        out = []
        for h, r, t in path:
            hi, ti = self.by_name[h], self.by_name[t]
            ri = next((i for i in self.rels_named[r] if (hi, i, ti) in self.triple_set), self.rels_named[r][0])
            out.append((self.qa.ids[hi], self.qa.rel_ids[ri], self.qa.ids[ti]))
        return out

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
        return max(1, len(item[0]) // 4)

    def run(self, capability: str, items: list[Any]) -> list[Any]:
        """Items are ``(text, threshold or None for the extractor's own)``."""
        return [self.extractor.extract(text, threshold=threshold) for text, threshold in items]


class KGQAService(Service):
    """A trained KGQA run: answers to a question about a ``[bracketed]`` entity, with evidence
    paths both as the names the model prints and as entity and relation ids."""

    capabilities = ("ask",)

    def __init__(self, name: str, folder: Path):
        from kelm.kgqa.answer import QAModel

        super().__init__(name, "kgqa")
        self.model = QAModel(folder)
        self.graph = EvidenceGraph(self.model.graph)
        self.provenance: dict[tuple[str, str, str], Any] = {}

    def attach(self, kg: Any, graph: EvidenceGraph) -> None:
        """Read each fact's provenance from ``kg``: the store's, now and after each write."""
        self.provenance = {t.key(): t.provenance for t in kg.triples() if t.provenance is not None}

    def run(self, capability: str, items: list[Any]) -> list[Any]:
        """Items are ``(question, top, paths)``; answers are `Response.as_dict` with ``topic_id`` and,
        per answer, ``paths`` of ``{head, relation, tail}`` ids (with the store's provenance of each
        fact when a store is attached) and ``rules``: per path, the rule it instantiates."""
        from kelm.kgqa.evidence import path_rule

        out = []
        for q, top, paths in items:
            response = self.model.ask(q, top=top, paths=paths)
            found = response.as_dict()
            topic = self.graph.by_name.get(response.topic or "")
            found["topic_id"] = None if topic is None else self.model.graph.ids[topic]
            for answer, given in zip(found["answers"], response.answers, strict=True):
                id_paths = [self.graph.path_ids(p) for p in given.evidence]
                answer["paths"] = [_fact_dicts(p, self.provenance) for p in id_paths]
                answer["rules"] = [path_rule(p, found["topic_id"]) for p in id_paths] if found["topic_id"] else []
            out.append(found)
        return out


class FusedService(Service):
    """A KG-enhanced classifier (`kelm fuse train`): the label of each text and the graph entities
    it linked."""

    capabilities = ("classify",)

    def __init__(self, name: str, folder: Path):
        from kelm.app.fused import FusedClassifier

        super().__init__(name, "kg-fusion")
        self.classifier = FusedClassifier(folder)

    def tokens(self, capability: str, item: Any) -> int:
        return min(int(len(item.split()) * 1.3) + 2, self.classifier.max_length)

    def run(self, capability: str, items: list[Any]) -> list[Any]:
        return [
            {"label": p.label, "probability": p.probability,
             "entities": [{"start": m.start, "end": m.end, "text": p.text[m.start : m.end], "entity": m.entity,
                           "method": m.method} for m in p.mentions]}
            for p in self.classifier.predict(items)
        ]  # fmt: skip


def _fact_dicts(path: Sequence[tuple[str, str, str]], provenance: dict | None = None) -> list[dict[str, Any]]:
    """Facts as ``{head, relation, tail}``, with ``source``, ``confidence`` and ``time`` where
    ``provenance`` records them."""
    from kelm.kg.model import provenance_fields

    out = []
    for fact in path:
        found: dict[str, Any] = dict(zip(("head", "relation", "tail"), fact, strict=True))
        p = (provenance or {}).get(fact)
        out.append(found if p is None else found | provenance_fields(p))
    return out


class LinkerService(Service):
    """Entity linking against the store: the dictionary stage of `kelm.linking.EntityLinker`
    (labels, and ids read with ``_`` as spaces)."""

    capabilities = ("link",)

    def __init__(self, kg: Any):
        super().__init__("store-linker", "linker")
        self.attach(kg)

    def attach(self, kg: Any, graph: EvidenceGraph | None = None) -> None:
        """Link against the entities of ``kg``: the store's, now and after each write."""
        from kelm.linking.linker import EntityLinker

        self.linker = EntityLinker.from_kg(kg)
        self.labels = {e.id: e.label for e in kg.entities.values()}

    def run(self, capability: str, items: list[Any]) -> list[Any]:
        return self.linker.link_many(items)


LINK_PREDICTION_KINDS = ("kge", "text-kgc", "frozen-text-kgc", "hybrid", "rules")
SERVED_KINDS = ("hf", "moe-hf", *LINK_PREDICTION_KINDS, "kgqa", "kg-fusion", "extractor")


def model_names(paths: Sequence[str | Path]) -> list[str]:
    """A name per run folder: its own name, with as many parent folders as it takes to tell apart
    folders of one name (``transductive/hybrid`` and ``inductive/hybrid``)."""
    parts = [_run_folder(Path(p)).parts for p in paths]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            return names
        depth += 1


def _run_folder(path: Path) -> Path:
    folder = path.resolve()
    return folder.parent if folder.name == "model" else folder


def load_service(path: str | Path, graph: EvidenceGraph | None = None, name: str | None = None) -> Service:
    """The service of a run folder, by the kind its ``[model]`` table names (``name``: the folder's)."""
    from kelm.app.models import model_kind

    folder = Path(path)
    kind = model_kind(folder)
    name = name or _run_folder(folder).name
    if kind in ("hf", "moe-hf"):
        return HFService(name, folder)
    if kind in LINK_PREDICTION_KINDS:
        return LinkPredictionService(name, kind, LinkPredictor.load(folder, kind), graph)
    if kind == "extractor":
        return ExtractorService(name, folder)
    if kind == "kgqa":
        return KGQAService(name, folder)
    if kind == "kg-fusion":
        return FusedService(name, folder)
    served = ", ".join(SERVED_KINDS)
    raise DataError(f"model kind '{kind}' cannot be served (served: {served})", folder)
