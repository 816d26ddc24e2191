"""``kelm compress``: a smaller or faster copy of a run folder, measured beside its original.

Methods (each writes a normal run folder that `kelm predict`, `kelm serve` and, where Hugging Face
can, ``from_pretrained`` load):

- ``distill``: the ``distill`` task trains a student (default: half the teacher's layers); of a
  KG-enhanced classifier, a plain text classifier that needs no graph at inference; of a KGE run,
  a smaller embedding; of a text-KGC run, a frozen-text scorer (no LM pass per query);
- ``share``: the same with an ALBERT-style student whose layers share weights;
- ``int8``: int8 weights on disk and an int8 runtime (torch's dynamic quantization or torchao's;
  ``auto`` times both on the run's own data and keeps the faster);
- ``prune``: unstructured magnitude pruning, or structured pruning of heads and FFN units, each
  followed by a short recovery fine-tune through the engine.

The work happens in a hidden folder beside ``--out``, renamed into place only when complete, so a
failure leaves no half-written output. ``compression.json`` records size on disk, parameters,
latency (p50/p99 at batch 1 and 32), throughput and the task metric, original beside compressed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from kelm.app.compress_measure import Measured, load_measured, machine, measure_pair, ratios, task_table, time_all
from kelm.app.compress_report import COMPRESSION_FILE
from kelm.artifacts import CONFIG, MODEL_DIR, read_model_spec
from kelm.atomic import write_text_atomic
from kelm.config import read_toml
from kelm.errors import ConfigError

METHODS = ("distill", "int8", "prune", "share")
COMPRESSIBLE_HEADS = ("classification", "ner")
#: Methods that apply to KGE runs (embedding tables have no layers to prune or share).
KGE_METHODS = ("distill", "int8")
#: Kinds whose runs compress by distillation only, into a student of another kind.
DISTILL_ONLY = {"kg-fusion": "a text classifier", "text-kgc": "a frozen-text scorer"}


@dataclass
class CompressOptions:
    """What ``kelm compress`` was asked for; fields a method does not use are ignored."""

    method: Literal["distill", "int8", "prune", "share"]
    # distill / share
    student: str = "layers"
    layers: int | list[int] = 3
    groups: int = 1
    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    dim: int = 128  # distill of a KGE run: the student's embedding size
    # int8
    backend: Literal["auto", "torch", "torchao", "none"] = "auto"
    scheme: Literal["dynamic", "weight-only"] = "dynamic"
    # prune
    sparsity: float = 0.5
    heads: float = 0.0
    ffn: float = 0.0
    importance_batches: int = 16
    # training (distill, share, recovery after pruning): overrides of the source run's [train]
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def structured(self) -> bool:
        return self.heads > 0 or self.ffn > 0


# -- the source run ------------------------------------------------------------------------------
def source_spec(run: Path, method: str) -> tuple[Path, dict[str, Any]]:
    """The model folder and ``[model]`` table of a run ``kelm compress`` can compress with ``method``."""
    from kelm.app.models import model_kind

    if method not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}, not '{method}'")
    kind = model_kind(run)
    if kind in DISTILL_ONLY:
        if method != "distill":
            raise ConfigError(f"{run}: a '{kind}' model compresses by distillation into {DISTILL_ONLY[kind]} only")
        return read_model_spec(run, kind)
    if kind == "kge":
        folder, spec = read_model_spec(run, "kge")
        if method not in KGE_METHODS:
            raise ConfigError(f"{run}: --method {method} does not apply to a KGE model (use distill or int8)")
        if spec.get("quantization") is not None:
            raise ConfigError(f"{run}: already int8-quantized; compress the float run it came from")
        return folder, spec
    if kind != "hf":
        raise ConfigError(
            f"{run}: a '{kind}' model folder; kelm compress takes classification, NER, KG-enhanced, "
            "link-prediction and text-KGC runs"
        )
    folder, spec = read_model_spec(run, "hf")
    if spec.get("head") not in COMPRESSIBLE_HEADS:
        raise ConfigError(f"{run}: a '{spec.get('head')}' model; kelm compress takes classification and NER runs")
    if spec.get("quantization") is not None:
        raise ConfigError(f"{run}: already int8-quantized; compress the float run it came from")
    return folder, spec


def train_table(folder: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The source run's ``[train]`` table with ``overrides``; ``max_steps`` cleared when epochs change."""
    table = dict(read_toml(folder / CONFIG).get("train", {}))
    if "epochs" in overrides and "max_steps" not in overrides:
        table.pop("max_steps", None)
    table |= overrides
    table.pop("resume", None)
    return table


# -- methods ----------------------------------------------------------------------------------------
def _train(config: dict[str, Any], out: Path) -> dict[str, Any]:
    from kelm.app.run import run_training

    summary = run_training(config, out)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # a compressed run is a final model
    return summary


def _distill_kge(source: Path, options: CompressOptions, stage: Path) -> dict[str, Any]:
    """A smaller KGE model of the same graph, trained on the data and on the teacher's scores."""
    task = dict(read_toml(source / CONFIG).get("task", {}))
    task |= {"dim": options.dim, "teacher": str(source), "distill_weight": options.alpha}
    task |= {"distill_temperature": options.temperature}
    return _train({"train": train_table(source, options.train), "task": task}, stage)


def _distill_text_kgc(source: Path, options: CompressOptions, stage: Path) -> dict[str, Any]:
    """A frozen-text scorer of the same graph, trained on the data and on the teacher's scores."""
    teacher = dict(read_toml(source / CONFIG).get("task", {}))
    fields = ("dataset", "data_dir", "inductive", "inductive_seed", "train_split", "valid_split", "test_split")
    task = {k: teacher[k] for k in fields if k in teacher} | {"name": "frozen-text-kgc", "dim": options.dim}
    task |= {"teacher": str(source), "distill_weight": options.alpha, "distill_temperature": options.temperature}
    # the settings `kelm demo` trains its frozen-text model with
    train = {"strategy": "single", "optimizer": "adamw", "lr": 3e-3, "schedule": "constant", "clip_grad_norm": 100.0}
    train |= {"batch_size": 256, "max_steps": 1000, "eval_every": 50, "early_stopping_patience": 5}
    return _train({"train": train | options.train, "task": task}, stage)


def _distill(source: Path, options: CompressOptions, stage: Path) -> dict[str, Any]:
    student = "shared" if options.method == "share" else options.student
    task = {
        "name": "distill",
        "teacher": str(source),
        "student": student,
        "layers": options.layers,
        "groups": options.groups,
        "temperature": options.temperature,
        "alpha": options.alpha,
        "hidden_weight": options.hidden_weight,
        "attention_weight": options.attention_weight,
    }
    return _train({"train": train_table(source, options.train), "task": task}, stage)


def _int8(source: Path, options: CompressOptions, stage: Path, table: dict[str, Any]) -> dict[str, Any]:
    """Write the int8 folder; with backend ``auto``, time both runtimes and keep the faster."""
    from kelm.compress.int8 import FORMAT, save_int8

    model_dir = stage / MODEL_DIR
    model_dir.mkdir(parents=True)
    for item in source.iterdir():  # tokenizer, vocabularies, configs; the weights are written as int8
        if item.is_file() and item.suffix != ".safetensors":
            shutil.copy2(item, model_dir / item.name)
    if (source.parent / CONFIG).is_file():  # the run's config, as a run folder has it
        shutil.copy2(source.parent / CONFIG, stage / CONFIG)
    config = read_toml(source / CONFIG)
    if config.get("model", {}).get("kind") == "kge":  # tables: int8 on disk, float lookups
        from kelm.kge.folder import load_kge

        save_int8(load_kge(source)[0], model_dir)
        _write_config(model_dir, config, {"format": FORMAT, "backend": "none", "scheme": "weight-only"})
        original, compressed = measure_pair(source, model_dir, table)
        return {"backend": "none", "original": original, "compressed": compressed}
    from kelm.lm.hf import load_finetuned

    model, _, _ = load_finetuned(source)
    save_int8(model, model_dir)
    skip = ["classifier"] if isinstance(getattr(model, "classifier", None), nn.Module) else []
    backends = ["torch", "torchao"] if options.backend == "auto" else [options.backend]
    if options.scheme == "weight-only":
        backends = [b for b in backends if b == "torchao"] or backends
    candidates: dict[str, Measured] = {"original": load_measured(source, table)}
    for backend in backends:
        _write_config(model_dir, config, {"format": FORMAT, "backend": backend, "scheme": options.scheme, "skip": skip})
        candidates[backend] = load_measured(model_dir, table)
    time_all(candidates)
    best = min(backends, key=lambda b: candidates[b].record["latency"]["batch_32"]["p50_ms"])
    _write_config(model_dir, config, {"format": FORMAT, "backend": best, "scheme": options.scheme, "skip": skip})
    return {
        "backends": {b: candidates[b].record["latency"] for b in backends},
        "backend": best,
        "original": candidates["original"].record,
        "compressed": candidates[best].record,
    }


def _write_config(model_dir: Path, config: dict[str, Any], quantization: dict[str, Any]) -> None:
    from kelm.artifacts import write_toml

    data = json.loads(json.dumps(config))
    data.setdefault("model", {})["quantization"] = quantization
    write_toml(model_dir / CONFIG, data)


def _prune(source: Path, options: CompressOptions, stage: Path, table: dict[str, Any]) -> dict[str, Any]:
    """Prune the source model, save it as the start of a recovery fine-tune, and fine-tune."""
    from kelm.compress.prune import magnitude_prune, prune_structured, sparsity_of, taylor_importance
    from kelm.lm.hf import load_finetuned, save_model_folder
    from kelm.tasks import build_task

    model, tokenizer, spec = load_finetuned(source)
    start = stage / "pruned"
    config = read_toml(source / CONFIG)
    report: dict[str, Any] = {}
    recovery = table | {"model": str(start)}
    if options.structured:
        task = build_task(table | {"model": str(source)})
        data = task.train_data()
        size = int(config.get("train", {}).get("batch_size", 16))
        count = min(len(data), size * options.importance_batches)
        batches = [task.collate([data[j] for j in range(i, min(i + size, count))]) for i in range(0, count, size)]
        importance = taylor_importance(model, batches, lambda m, b: task.loss(m, b)[0])
        report["kept"] = prune_structured(model, importance, options.heads, options.ffn)
        if options.heads > 0:  # head counts config.json cannot express: loads with kelm only
            config["model"] = {**spec, "structure": "pruned"}
    else:
        magnitude_prune(model, options.sparsity)
        report["sparsity"] = sparsity_of(model)
        recovery["keep_zero_weights"] = True
    save_model_folder(start, model, tokenizer, config)
    overrides = {"epochs": 2} | options.train
    _train({"train": train_table(source, overrides), "task": recovery}, stage)
    shutil.rmtree(start)
    if not options.structured:
        report["sparsity_after_recovery"] = sparsity_of(load_finetuned(stage)[0])
    return report


# -- the command ----------------------------------------------------------------------------------
def compress_run(run: str | Path, out: str | Path, options: CompressOptions) -> dict[str, Any]:
    """Compress ``run`` into ``out`` with ``options.method``; returns what ``compression.json`` holds."""
    run, out = Path(run), Path(out)
    source, _ = source_spec(run, options.method)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists; choose a new folder")
    table = task_table(source)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        details: dict[str, Any] = {}
        if options.method == "int8":
            details = _int8(source, options, stage, table)
            original, compressed = details.pop("original"), details.pop("compressed")
        else:
            if options.method == "distill" and table["name"] == "link-prediction":
                _distill_kge(source, options, stage)
            elif options.method == "distill" and table["name"] == "text-kgc":
                _distill_text_kgc(source, options, stage)
            elif options.method in ("distill", "share"):
                _distill(source, options, stage)
            else:
                details = _prune(source, options, stage, table)
            original, compressed = measure_pair(source, stage / MODEL_DIR, table, task_table(stage / MODEL_DIR))
        record = {
            "method": options.method,
            "source": str(run),
            "options": asdict(options),
            "details": details,
            "original": original,
            "compressed": compressed,
            "ratios": ratios(original, compressed),
            "machine": machine(),
        }
        write_text_atomic(stage / COMPRESSION_FILE, json.dumps(record, indent=2, default=str))
        if out.exists():
            out.rmdir()
        os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return record


__all__ = ["COMPRESSION_FILE", "METHODS", "CompressOptions", "compress_run", "measure_pair", "ratios"]
