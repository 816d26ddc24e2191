"""A saved ``kg-enhanced-classification`` model loaded for inference.

`kelm fuse train` exports the weights and, beside them (`KGEnhancedTask.save_artifacts`), the
graph it was trained with (a TSV folder), the entity index of the nearest-neighbour linker and
the settings that rebuild the model and its input pipeline (``fusion.json``). `FusedClassifier`
links each input text to that graph, retrieves the linked entities' subgraph with the same
sampling as in training, and classifies the text with the fused model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kelm.errors import DataError
from kelm.fusion.subgraph import Adjacency
from kelm.linking.linker import EntityIndex, EntityLinker, Mention
from kelm.lm.encoding import load_text_embedder


@dataclass
class Prediction:
    text: str
    label: str
    probability: float
    mentions: list[Mention]


class FusedClassifier:
    """Weights, graph, linker and tokenizer of an exported fused model (a run or its ``model/`` folder)."""

    def __init__(self, path: str | Path):
        from kelm.artifacts import read_model_spec
        from kelm.kg.io import load_kg
        from kelm.kg.tensors import TripleTensors
        from kelm.lm.hf import load_tokenizer
        from kelm.tasks.kg_enhanced import (
            FUSION_INDEX,
            FUSION_KG,
            FUSION_SETTINGS,
            KGEnhancedConfig,
            build_fusion_model,
        )
        from kelm.train.export import load_weights

        folder, _ = read_model_spec(path, "kg-fusion")
        settings = _read_settings(folder / FUSION_SETTINGS)
        self.labels: list[str] = settings.pop("labels")
        self.max_length = int(settings.pop("max_length"))
        aliases = settings.pop("aliases")
        try:
            self.cfg = KGEnhancedConfig(name="kg-enhanced-classification", **settings)
        except ValueError as err:
            raise DataError(f"invalid settings ({err})", folder / FUSION_SETTINGS) from None
        kg, _ = load_kg(folder / FUSION_KG)
        self.tensors = TripleTensors.from_graph(kg)
        self.adjacency = Adjacency.from_tensors(self.tensors)
        self.entity_row = self.tensors.entity_index()
        index = EntityIndex.load(folder / FUSION_INDEX) if (folder / FUSION_INDEX).is_file() else None
        embed = None
        if self.cfg.link_encoder and index is not None:
            embed, _ = load_text_embedder(self.cfg.link_encoder, max_length=32)
        self.linker = EntityLinker.from_kg(
            kg, aliases, index if embed is not None else None, embed, self.cfg.link_threshold
        )
        features = index.vectors[: self.tensors.num_entities] if index is not None else None
        self.tokenizer = load_tokenizer(self.cfg.model)
        model = build_fusion_model(self.cfg, self.tokenizer, self.max_length, self.tensors, len(self.labels), features)
        self.model = load_weights(model, folder).eval()

    def subgraph(self, seeds: list[int], index: int) -> tuple[list[int], torch.Tensor]:
        c = self.cfg
        return self.adjacency.k_hop(seeds, c.hops, c.fanout, index, c.max_nodes)

    @torch.no_grad()
    def predict(self, texts: list[str]) -> list[Prediction]:
        """The most probable label of each text, its probability and the text's linked entities."""
        from kelm.lm.batching import encode_inputs
        from kelm.tasks.kg_enhanced import collate_graphs, link_and_encode

        if not texts:
            return []
        samples, _, _ = link_and_encode(
            texts, self.tokenizer, self.max_length, self.linker, self.entity_row, self.subgraph
        )
        batch: dict[str, Any] = encode_inputs(samples, self.tokenizer.pad_token_id) | collate_graphs(samples)
        batch["labels"] = torch.zeros(len(texts), dtype=torch.int64)  # sets the batch size only
        probs = self.model(**batch)["logits"].float().softmax(-1)
        best, label = probs.max(-1)
        return [
            Prediction(t, self.labels[int(k)], float(p), s["linked"])
            for t, k, p, s in zip(texts, label, best, samples, strict=True)
        ]


def _read_settings(path: Path) -> dict[str, Any]:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read the fused model's settings ({err})", path) from None
    missing = {"labels", "max_length", "aliases"} - set(settings)
    if missing:
        raise DataError(f"missing {', '.join(sorted(missing))}", path)
    return settings


__all__ = ["FusedClassifier", "Prediction"]
