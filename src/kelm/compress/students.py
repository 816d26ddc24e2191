"""Student models built from a teacher: a shallower copy keeping some of its layers (DistilBERT),
or an ALBERT-style model whose layers share one set of weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

from kelm.compress.prune import encoder_layers
from kelm.errors import ConfigError


def alternate_layers(depth: int, keep: int) -> list[int]:
    """``keep`` evenly spaced layers of ``depth``, ending at the last one (6 → 3: 1, 3, 5)."""
    if not 1 <= keep <= depth:
        raise ConfigError(f"a student keeps between 1 and {depth} layers, not {keep}")
    step = depth / keep
    return [round(step * (i + 1)) - 1 for i in range(keep)]


def keep_layers(teacher: nn.Module, layers: list[int]) -> nn.Module:
    """A copy of ``teacher`` with only the encoder layers ``layers`` (in that order)."""
    student = copy.deepcopy(teacher)
    modules = encoder_layers(student)
    depth = len(modules)
    bad = [i for i in layers if not 0 <= i < depth]
    if bad or not layers:
        raise ConfigError(f"student layers {layers}: the teacher has layers 0..{depth - 1}")
    encoder = _encoder(student)
    encoder.layer = nn.ModuleList([modules[i] for i in layers])
    student.config.num_hidden_layers = len(layers)
    return student


def _encoder(model: nn.Module) -> nn.Module:
    """The module holding the ``layer`` list of a BERT-style model."""
    for name, module in model.named_modules():
        if name.endswith("encoder") and isinstance(getattr(module, "layer", None), nn.ModuleList):
            return module
    raise ConfigError(f"{type(model).__name__} has no encoder.layer list")


def shared_student(teacher: nn.Module, num_layers: int, groups: int = 1) -> nn.Module:
    """An ALBERT model (cross-layer sharing: ``num_layers`` layers, ``groups`` distinct weight sets)
    with the teacher's head, initialised from the teacher: embeddings, pooler and head copied, each
    group's layer from the teacher layer at the middle of the layers it stands for."""
    from transformers import AlbertConfig, AlbertForSequenceClassification, AlbertForTokenClassification

    if not 1 <= groups <= num_layers:
        raise ConfigError(f"weight-sharing groups must be between 1 and the layer count ({num_layers}), not {groups}")
    cfg = teacher.config
    heads = {"BertForSequenceClassification": AlbertForSequenceClassification}
    heads["BertForTokenClassification"] = AlbertForTokenClassification
    cls = heads.get(type(teacher).__name__)
    if cls is None:
        raise ConfigError(
            f"weight sharing builds students of BERT classifiers and taggers, not {type(teacher).__name__}"
        )
    albert = AlbertConfig(
        vocab_size=cfg.vocab_size,
        embedding_size=cfg.hidden_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=num_layers,
        num_hidden_groups=groups,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        hidden_act=cfg.hidden_act,
        hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        max_position_embeddings=cfg.max_position_embeddings,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps,
        classifier_dropout_prob=getattr(cfg, "classifier_dropout", None) or cfg.hidden_dropout_prob,
        num_labels=cfg.num_labels,
        id2label=dict(cfg.id2label),
        label2id=dict(cfg.label2id),
        pad_token_id=cfg.pad_token_id,
    )
    student = cls(albert)
    sd = teacher.state_dict()
    depth = len(encoder_layers(teacher))
    new: dict[str, torch.Tensor] = {}
    for key in ("word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight"):
        new[f"albert.embeddings.{key}"] = sd[f"bert.embeddings.{key}"]
    for key in ("weight", "bias"):
        new[f"albert.embeddings.LayerNorm.{key}"] = sd[f"bert.embeddings.LayerNorm.{key}"]
        new[f"classifier.{key}"] = sd[f"classifier.{key}"]
        if f"bert.pooler.dense.{key}" in sd and hasattr(student.albert, "pooler") and student.albert.pooler is not None:
            new[f"albert.pooler.{key}"] = sd[f"bert.pooler.dense.{key}"]
    hidden = cfg.hidden_size
    new["albert.encoder.embedding_hidden_mapping_in.weight"] = torch.eye(hidden)
    new["albert.encoder.embedding_hidden_mapping_in.bias"] = torch.zeros(hidden)
    names = {
        "attention.query": "attention.self.query",
        "attention.key": "attention.self.key",
        "attention.value": "attention.self.value",
        "attention.dense": "attention.output.dense",
        "attention.LayerNorm": "attention.output.LayerNorm",
        "ffn": "intermediate.dense",
        "ffn_output": "output.dense",
        "full_layer_layer_norm": "output.LayerNorm",
    }
    for g in range(groups):
        middle = (g + 0.5) / groups  # the share of depth this group stands for
        source = min(depth - 1, int(middle * depth))
        for a, b in names.items():
            for key in ("weight", "bias"):
                new[f"albert.encoder.albert_layer_groups.{g}.albert_layers.0.{a}.{key}"] = sd[
                    f"bert.encoder.layer.{source}.{b}.{key}"
                ]
    missing, unexpected = student.load_state_dict(new, strict=False)
    left = [m for m in missing if "position_ids" not in m and "token_type_ids" not in m]
    if left or unexpected:
        raise ConfigError(f"cannot map the teacher onto an ALBERT student (missing {left}, unexpected {unexpected})")
    return student


__all__ = ["alternate_layers", "keep_layers", "shared_student"]
