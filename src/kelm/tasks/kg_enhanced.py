"""``kg-enhanced-classification``: text classification with a knowledge graph fused into the LM.

Data are classification files (``id<TAB>text<TAB>label``, as `classification` reads them), a
registered data set, or ``dataset = "umls-groups"``, generated from the graph by
`kelm.fusion.data` (written once under ``$KELM_CACHE_DIR/fusion``). For every text the task links
entities (`kelm.linking.linker`: dictionary, then nearest neighbours when ``link_encoder`` is
set), retrieves their k-hop subgraph once (from the in-memory graph, or from a graph store when
``store`` is given; same sampling) and keeps it with the sample; mentions are mapped to tokens
through the tokenizer's offsets. The model (`kelm.fusion.model`) and the loss
``L = L_task + lambda_kg · L_KG + lambda_align · L_align`` follow ``mode`` (lm, kg, joint) and
``fusion`` (concat, greaselm). Metrics are those of `classification` (accuracy, macro-F1); the
linking statistics of every split are in ``linking`` of the task (and the benchmark).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch_geometric.data import Batch as PyGBatch

from kelm.atomic import write_text_atomic
from kelm.fusion.gnn import GraphEncoder
from kelm.fusion.model import FusionModel, FusionSettings
from kelm.fusion.subgraph import Adjacency, store_subgraph, to_data
from kelm.kg.datasets import load_graph
from kelm.kg.model import KnowledgeGraph
from kelm.kg.tensors import TripleTensors
from kelm.linking.linker import EntityIndex, EntityLinker, build_entity_index, read_aliases
from kelm.lm.encoding import load_text_embedder
from kelm.tasks.classification import ClassificationConfig, ClassificationTask
from kelm.train.task import Batch

#: Files `save_artifacts` writes beside the weights, for `kelm.app.fused`.
FUSION_KG = "kg"
FUSION_INDEX = "entity_index.safetensors"
FUSION_SETTINGS = "fusion.json"
#: The ``[task]`` fields a saved model needs to link, retrieve and rebuild itself.
INFERENCE_FIELDS = {
    "model",
    "hidden_size",
    "num_layers",
    "num_heads",
    "mode",
    "fusion",
    "link_encoder",
    "link_threshold",
    "hops",
    "fanout",
    "max_nodes",
    "gnn",
    "gnn_dim",
    "gnn_layers",
    "gat_heads",
    "node_features",
    "kg_holdout",
    "kg_negatives",
    "temperature",
    "dropout",
}


class KGEnhancedConfig(ClassificationConfig):
    """``[task]`` for ``kg-enhanced-classification``."""

    name: Literal["kg-enhanced-classification"] = "kg-enhanced-classification"  # type: ignore[assignment]
    kg: str = Field("umls", description="graph: a registered data set, a file or a folder of triples")
    store: str | None = Field(None, description="read subgraphs from this graph store instead (same graph)")
    backend: str = "ladybug"
    uri: str | None = None
    aliases: str | None = Field(None, description="id<TAB>alias... file of extra entity names")
    mode: Literal["lm", "kg", "joint"] = "joint"
    fusion: Literal["concat", "greaselm"] = "concat"
    # linking
    link_encoder: str | None = Field("minilm", description="encoder for nearest-neighbour linking; none: off")
    link_threshold: float = Field(0.7, ge=-1, le=1)
    # subgraphs
    hops: int = Field(1, ge=0)
    fanout: int | None = Field(8, ge=1)
    max_nodes: int | None = Field(48, ge=1)
    # graph encoder
    gnn: Literal["rgcn", "gat"] = "rgcn"
    gnn_dim: int = Field(64, ge=4)
    gnn_layers: int = Field(2, ge=1)
    gat_heads: int = Field(2, ge=1)
    node_features: Literal["kge", "text"] = "kge"
    kge_init: str | None = Field(None, description="trained kelm KGE run folder to initialise the entity table")
    # joint loss
    lambda_kg: float = Field(0.1, ge=0)
    lambda_align: float = Field(0.1, ge=0)
    temperature: float = Field(0.1, gt=0)
    kg_holdout: float = Field(0.15, ge=0, lt=1)
    kg_negatives: int = Field(4, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    generate_per_entity: int = Field(40, ge=1, description="umls-groups: sentences per entity")


class KGEnhancedTask(ClassificationTask):
    config_class = KGEnhancedConfig
    name = "kg-enhanced-classification"

    def __init__(self, cfg: KGEnhancedConfig, kg: KnowledgeGraph | None = None):
        self.kg = kg if kg is not None else load_graph(cfg.kg, cfg.data_dir)
        self.tensors = TripleTensors.from_graph(self.kg)
        self.adjacency = Adjacency.from_tensors(self.tensors)
        self.entity_row = self.tensors.entity_index()
        aliases = read_aliases(cfg.aliases) if cfg.aliases else None
        self.text_features: torch.Tensor | None = None
        index = embed = None
        if cfg.link_encoder or cfg.node_features == "text":
            embed, _ = load_text_embedder(cfg.link_encoder or "minilm", max_length=32)
            index = cached_index(self.kg, self.tensors.entity_ids, cfg.link_encoder or "minilm", embed)
            self.text_features = index.vectors[: self.tensors.num_entities]  # "label: description" rows
        self.index = index
        if not cfg.link_encoder:
            index = embed = None
        self.linker = EntityLinker.from_kg(self.kg, aliases, index, embed, cfg.link_threshold)
        self.linking: dict[str, dict[str, float]] = {}
        self._store = None
        if cfg.dataset == "umls-groups":
            cfg = cfg.model_copy(update=_generated_files(self.kg, cfg))
        self.cfg: KGEnhancedConfig = cfg
        try:
            super().__init__(cfg)
        finally:
            if self._store is not None:
                self._store.close()

    # -- samples --------------------------------------------------------------------------------
    def encode(self, texts: list[str]) -> tuple[list[dict[str, Any]], int]:
        """Token ids, linked mentions (token spans) and the subgraph of each text."""
        samples, cut, linked = link_and_encode(
            texts, self.tokenizer, self.max_length, self.linker, self.entity_row, self.subgraph
        )
        self.linking[f"set{len(self.linking)}"] = {"texts": len(texts), "mentions": linked}
        return samples, cut

    def subgraph(self, seeds: list[int], index: int) -> tuple[list[int], torch.Tensor]:
        """Nodes and facts around ``seeds``; sample ``index`` seeds the fanout draw."""
        c = self.cfg
        if c.store:
            if self._store is None:
                from kelm.kg.store import open_store

                self._store = open_store(c.store, c.backend, c.uri, read_only=True)
            return store_subgraph(self._store, self.tensors, seeds, c.hops, c.fanout, index, c.max_nodes)
        return self.adjacency.k_hop(seeds, c.hops, c.fanout, index, c.max_nodes)

    def collate(self, samples: list[Any]) -> Batch:
        return super().collate(samples) | collate_graphs(samples)

    # -- model, loss, metrics ---------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        assert self.labels is not None
        return build_fusion_model(
            self.cfg, self.tokenizer, self.max_length, self.tensors, len(self.labels), self.text_features
        )

    def loss_parts(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """``task``, and ``kg`` / ``align`` where the mode has them, unweighted."""
        out = model(**batch)
        parts = {"task": F.cross_entropy(out["logits"].float(), batch["labels"])}
        for key in ("kg", "align"):
            if f"{key}_loss" in out:
                parts[key] = out[f"{key}_loss"]
        return parts

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        parts = self.loss_parts(model, batch)
        weights = {"task": 1.0, "kg": self.cfg.lambda_kg, "align": self.cfg.lambda_align}
        total = sum(weights[k] * v for k, v in parts.items())
        return total, {f"loss_{k}": float(v.detach()) for k, v in parts.items()}  # type: ignore[return-value]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Sequence[Batch]) -> dict[str, float]:
        """`classification`'s metrics over the fused model's logits (replayed batch by batch)."""
        logits = iter([model(**b)["logits"] for b in batches])
        return super().evaluate(lambda **_: SimpleNamespace(logits=next(logits)), batches)  # type: ignore[arg-type]

    def model_config(self) -> dict[str, Any]:
        spec = {"kind": "kg-fusion", "mode": self.cfg.mode, "fusion": self.cfg.fusion, "base": self.cfg.model}
        return {"task": self.name, "model": spec | {"labels": list(self.labels or [])}}

    def save_artifacts(self, folder: Path) -> None:
        """The classification report beside the model (no ``config.json``: not a plain HF checkpoint);
        the graph (`write_tsv`), its entity index and the settings inference needs, in ``folder``."""
        import json

        from kelm.kg.io import write_tsv

        self._hf_config = None
        super().save_artifacts(folder)
        write_tsv(self.kg, folder / FUSION_KG)
        if self.index is not None:
            self.index.save(folder / FUSION_INDEX)
        settings = self.cfg.model_dump(include=INFERENCE_FIELDS) | {
            "max_length": self.max_length,
            "labels": list(self.labels or []),
            "aliases": read_aliases(self.cfg.aliases) if self.cfg.aliases else {},
        }
        write_text_atomic(folder / FUSION_SETTINGS, json.dumps(settings, indent=1) + "\n")


def link_and_encode(
    texts: list[str],
    tokenizer: Any,
    max_length: int,
    linker: EntityLinker,
    entity_row: dict[str, int],
    subgraph: Callable[[list[int], int], tuple[list[int], torch.Tensor]],
) -> tuple[list[dict[str, Any]], int, int]:
    """Per text: token ids, the linked mentions as ``(first token, end token, subgraph node)`` and
    the subgraph of its entities (``subgraph(seed rows, text index)``); how many texts were cut,
    and how many mentions were linked."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_offsets_mapping=True)
    samples, cut, linked = [], 0, 0
    for i, mentions in enumerate(linker.link_many(texts)):
        seeds = [entity_row[m.entity] for m in mentions]
        graph = to_data(*subgraph(seeds, i), seeds)
        local = {int(n): j for j, n in enumerate(graph.node_ids.tolist())}
        spans = []
        for m, s in zip(mentions, seeds, strict=True):
            toks = [t for t, (a, b) in enumerate(enc["offset_mapping"][i]) if b > a and a < m.end and m.start < b]
            if toks and s in local:
                spans.append((toks[0], toks[-1] + 1, local[s]))
        sample: dict[str, Any] = {
            "input_ids": enc["input_ids"][i],
            "graph": graph,
            "mentions": spans,
            "linked": mentions,
        }
        if "token_type_ids" in enc:
            sample["token_type_ids"] = enc["token_type_ids"][i]
        cut += bool(enc.encodings[i].overflowing)
        linked += len(mentions)
        samples.append(sample)
    return samples, cut, linked


def collate_graphs(samples: list[Any]) -> Batch:
    """The samples' subgraphs as one PyG batch, their seeds, and their mentions' token spans."""
    graphs = PyGBatch.from_data_list([s["graph"] for s in samples], follow_batch=["seed_index"])
    offsets = graphs.ptr[:-1].tolist()
    ments = [(b, s, e, offsets[b] + n) for b, sample in enumerate(samples) for s, e, n in sample["mentions"]]
    cols = list(zip(*ments, strict=True)) if ments else [(), (), (), ()]
    batch: Batch = {
        "node_ids": graphs.node_ids,
        "edge_index": graphs.edge_index,
        "edge_type": graphs.edge_type,
        "seed_index": graphs.seed_index,
        "seed_batch": graphs.seed_index_batch,
    }
    for key, col in zip(("mention_batch", "mention_start", "mention_end", "mention_node"), cols, strict=True):
        batch[key] = torch.tensor(col, dtype=torch.int64)
    return batch


def build_fusion_model(
    cfg: KGEnhancedConfig,
    tokenizer: Any,
    max_length: int,
    tensors: TripleTensors,
    num_labels: int,
    text_features: torch.Tensor | None = None,
) -> FusionModel:
    """The fusion model ``cfg`` describes, over the graph ``tensors`` (a fresh head, a pretrained LM)."""
    from kelm.lm.encoding import load_encoder

    c = cfg
    settings = FusionSettings(
        mode=c.mode,
        fusion=c.fusion,
        kg_holdout=c.kg_holdout,
        kg_negatives=c.kg_negatives,
        temperature=c.temperature,
        dropout=c.dropout,
    )
    lm = graph = None
    if c.mode != "kg":
        sizes = {"hidden_size": c.hidden_size, "num_layers": c.num_layers, "num_heads": c.num_heads}
        lm = load_encoder(c.model, tokenizer, sizes, max(max_length, 512))
    if c.mode != "lm":
        graph = GraphEncoder(
            tensors.num_entities,
            tensors.num_relations,
            c.gnn_dim,
            c.gnn_layers,
            c.gnn,
            text_features=text_features if c.node_features == "text" else None,
            dropout=c.dropout,
            heads=c.gat_heads,
        )
        if c.kge_init:
            graph.init_from_kge(c.kge_init, tensors.entity_ids)
    return FusionModel(settings, num_labels, lm, graph)


def cached_index(kg: KnowledgeGraph, ids: list[str], encoder: str, embed: Any) -> EntityIndex:
    """The entity index of ``kg`` under ``encoder``, built once and kept under ``$KELM_CACHE_DIR/fusion``
    (a cached file whose rows or width do not fit the graph and the encoder is rebuilt)."""
    import hashlib

    from kelm.data.resolve import cache_root

    texts = [kg.entities[e].text() for e in ids]
    key = hashlib.sha256("\n".join([encoder, *ids, *texts]).encode()).hexdigest()[:16]
    path = cache_root() / "fusion" / f"index-{key}.safetensors"
    if path.is_file():
        index = EntityIndex.load(path)
        rows = len(ids) + sum(1 for e in ids if kg.entities[e].description)
        if index.vectors.shape == (rows, embed(texts[:1]).shape[-1]) and len(index.ids) == rows:
            return index
    index = build_entity_index(kg, embed, ids)
    path.parent.mkdir(parents=True, exist_ok=True)
    index.save(path)
    return index


def _generated_files(kg: KnowledgeGraph, cfg: KGEnhancedConfig) -> dict[str, Any]:
    from kelm.data.resolve import cache_root
    from kelm.fusion.data import write_groups

    folder = cache_root() / "fusion" / f"umls-groups-n{cfg.generate_per_entity}"
    if not (folder / "test.tsv").is_file():
        write_groups(folder, kg, seed=0, per_entity=cfg.generate_per_entity)
    files = {s: str(folder / f"{s}.tsv") for s in ("train", "dev", "test")}
    return {"dataset": None} | {k: getattr(cfg, k) or v for k, v in files.items()}


__all__ = [
    "KGEnhancedConfig",
    "KGEnhancedTask",
    "build_fusion_model",
    "cached_index",
    "collate_graphs",
    "link_and_encode",
]
