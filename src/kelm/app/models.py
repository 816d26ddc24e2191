"""Every kind of model folder kelm writes, and the one call that loads any of them.

The ``kind`` of a folder's ``[model]`` table (`kelm.artifacts`) names its loader here
(`kelm.registry` idiom), so `kelm predict` and the server load what a run exported without
knowing which task trained it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kelm.artifacts import read_model_spec
from kelm.errors import DataError
from kelm.registry import Registry

#: Model kind → the loader of a folder of that kind (each takes a run or model folder).
MODEL_KINDS: Registry[Any] = Registry(
    "model kind",
    {
        "gpt": "kelm.lm.gpt:load_gpt",
        "hf": "kelm.lm.hf:load_finetuned",
        "kge": "kelm.kge.folder:load_kge",
        "text-kgc": "kelm.kgc.text_kgc:load_text_kgc",
        "frozen-text-kgc": "kelm.kgc.frozen_text:load_frozen_text",
        "hybrid": "kelm.kgc.hybrid_fit:load_hybrid",
        "kgqa": "kelm.kgqa.answer:QAModel",
        "kg-fusion": "kelm.app.fused:FusedClassifier",
        "moe-hf": "kelm.lm.upcycle:load_upcycled",
        "extractor": "kelm.extract.extractor:Extractor.from_pretrained",
        "rules": "kelm.reason.model:load_reasoner",
    },
    error=DataError,
)


def model_kind(path: str | Path) -> str:
    """The kind of the model folder of ``path`` (a run or model folder; a hybrid's folder holds only
    its ``hybrid.json``, a rules folder its ``rules.tsv`` and ``mining.json``)."""
    from kelm.kgc.hybrid_fit import HYBRID_FILE
    from kelm.reason.folder import MINING_FILE

    if (Path(path) / HYBRID_FILE).is_file():
        return "hybrid"
    if (Path(path) / MINING_FILE).is_file():
        return "rules"
    folder, spec = read_model_spec(path)
    kind = spec.get("kind")
    if not isinstance(kind, str):
        raise DataError("no [model] kind in config.toml", folder / "config.toml")
    return kind


def load_model_folder(path: str | Path) -> tuple[str, Any]:
    """The kind of the folder and what its loader returns (a module, or a model with its vocabularies)."""
    kind = model_kind(path)
    return kind, MODEL_KINDS.get(kind)(path)


__all__ = ["MODEL_KINDS", "load_model_folder", "model_kind"]
