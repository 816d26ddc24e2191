"""``kelm compress``: a smaller or faster copy of a run folder, measured beside its original.

Methods (each writes a normal run folder that `kelm predict`, `kelm serve` and, where Hugging Face
can, ``from_pretrained`` load):

- ``distill``: the ``distill`` task trains a student (default: half the teacher's layers);
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
import platform
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from kelm.app.compress_report import COMPRESSION_FILE
from kelm.artifacts import CONFIG, MODEL_DIR, read_model_spec
from kelm.atomic import write_text_atomic
from kelm.config import read_toml
from kelm.errors import ConfigError, DataError

METHODS = ("distill", "int8", "prune", "share")
COMPRESSIBLE_HEADS = ("classification", "ner")
LATENCY_SAMPLES = 64
MIN_TIMINGS = 20


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
    # int8
    backend: Literal["auto", "torch", "torchao"] = "auto"
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
    if kind != "hf":
        raise ConfigError(f"{run}: a '{kind}' model folder; kelm compress takes fine-tuned classification and NER runs")
    folder, spec = read_model_spec(run, "hf")
    if spec.get("head") not in COMPRESSIBLE_HEADS:
        raise ConfigError(f"{run}: a '{spec.get('head')}' model; kelm compress takes classification and NER runs")
    if spec.get("quantization") is not None:
        raise ConfigError(f"{run}: already int8-quantized; compress the float run it came from")
    return folder, spec


def task_table(folder: Path) -> dict[str, Any]:
    """The ``[task]`` table that rebuilds the data and metrics of the model in ``folder`` (a
    distilled student's is its teacher's task, recorded in ``[model] task_table``)."""
    data = read_toml(folder / CONFIG)
    spec = data.get("model", {})
    table = spec.get("task_table") if isinstance(spec.get("task_table"), dict) else data.get("task")
    if not isinstance(table, dict) or table.get("name") not in COMPRESSIBLE_HEADS:
        raise DataError("no classification or ner [task] table to evaluate with", folder / CONFIG)
    return dict(table)


def train_table(folder: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The source run's ``[train]`` table with ``overrides``; ``max_steps`` cleared when epochs change."""
    table = dict(read_toml(folder / CONFIG).get("train", {}))
    if "epochs" in overrides and "max_steps" not in overrides:
        table.pop("max_steps", None)
    table |= overrides
    table.pop("resume", None)
    return table


# -- measuring --------------------------------------------------------------------------------------
def _task_for(folder: Path, table: dict[str, Any]) -> Any:
    from kelm.tasks import build_task

    return build_task(table | {"model": str(folder)})


@dataclass
class Measured:
    """A model folder loaded for measurement: its model, the samples it is measured on, and what
    was measured so far."""

    folder: Path
    model: nn.Module
    singles: list[dict[str, Any]]
    batches: list[dict[str, Any]]
    record: dict[str, Any]

    def forward(self, batch: dict[str, Any]) -> Any:
        from kelm.lm.batching import model_inputs

        return self.model(**model_inputs(batch))


def load_measured(folder: Path, table: dict[str, Any]) -> Measured:
    """Size, parameters and the task metric of the model in ``folder`` on the test split (the dev
    split without one); latency is measured later for several models at once (`time_all`)."""
    import warnings

    from kelm.compress.measure import folder_bytes, parameter_count, weight_bytes
    from kelm.lm.hf import load_finetuned

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = _task_for(folder, table)
    model, _, _ = load_finetuned(folder)
    split = "test" if task.test_data() is not None else "dev"
    samples = list(task.test_data() if split == "test" else task.eval_data() or [])
    if not samples:
        raise DataError("no test or dev split to measure on", folder / CONFIG)
    batches = [task.collate(samples[i : i + 32]) for i in range(0, len(samples), 32)]
    with torch.no_grad():
        metrics = task.finalize_metrics(task.evaluate(model, batches))
    record = {
        "size_bytes": folder_bytes(folder),
        "weight_bytes": weight_bytes(folder),
        "parameters": parameter_count(model),
        "metric": {"name": task.monitor, "value": metrics.get(task.monitor), "split": split},
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
    }
    singles = [task.collate([s]) for s in samples[:LATENCY_SAMPLES]]
    full = [b for b in batches if len(b["input_ids"]) == 32] or batches
    return Measured(folder, model, singles, full, record)


def time_all(models: dict[str, Measured]) -> None:
    """Latency at batch 1 and 32 of every model, interleaved (`interleaved_latency`), into each record."""
    from kelm.compress.measure import interleaved_latency

    for name in ("batch_1", "batch_32"):
        runs = {k: (m.forward, m.singles if name == "batch_1" else m.batches) for k, m in models.items()}
        batches = next(iter(runs.values()))[1]
        items = sum(len(b["input_ids"]) for b in batches)
        rounds = max(1, -(-MIN_TIMINGS // len(batches)))
        for k, timed in interleaved_latency(runs, items, rounds).items():
            models[k].record.setdefault("latency", {})[name] = timed


def measure_pair(original: Path, compressed: Path, table: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The records of an original and its compressed copy, their latency timed side by side."""
    models = {"original": load_measured(original, table), "compressed": load_measured(compressed, table)}
    time_all(models)
    return models["original"].record, models["compressed"].record


def ratios(original: dict[str, Any], compressed: dict[str, Any]) -> dict[str, float]:
    """Compressed over original: size, parameters, throughput and metric; original over compressed: latency."""
    o, c = original, compressed

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    return {
        "size": div(c["size_bytes"], o["size_bytes"]),
        "weights": div(c["weight_bytes"], o["weight_bytes"]),
        "parameters": div(c["parameters"], o["parameters"]),
        "speedup_batch_1": div(o["latency"]["batch_1"]["p50_ms"], c["latency"]["batch_1"]["p50_ms"]),
        "speedup_batch_32": div(o["latency"]["batch_32"]["p50_ms"], c["latency"]["batch_32"]["p50_ms"]),
        "throughput": div(c["latency"]["batch_32"]["items_per_second"], o["latency"]["batch_32"]["items_per_second"]),
        "metric_retained": div(c["metric"]["value"], o["metric"]["value"]),
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


# -- methods ----------------------------------------------------------------------------------------
def _train(config: dict[str, Any], out: Path) -> dict[str, Any]:
    from kelm.app.run import run_training

    summary = run_training(config, out)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # a compressed run is a final model
    return summary


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
    for item in source.iterdir():  # tokenizer and config files; the weights are written as int8
        if item.is_file() and item.suffix != ".safetensors":
            shutil.copy2(item, model_dir / item.name)
    from kelm.lm.hf import load_finetuned

    model, _, _ = load_finetuned(source)
    save_int8(model, model_dir)
    config = read_toml(source / CONFIG)
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
    if (source.parent / CONFIG).is_file():  # the run's config, as a run folder has it
        shutil.copy2(source.parent / CONFIG, stage / CONFIG)
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
        samples = list(task.train_data())
        batch = int(read_toml(source / CONFIG).get("train", {}).get("batch_size", 16))
        batches = [task.collate(samples[i : i + batch]) for i in range(0, len(samples), batch)]
        importance = taylor_importance(model, batches[: options.importance_batches], lambda m, b: task.loss(m, b)[0])
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
        from kelm.lm.hf import load_finetuned as reload

        report["sparsity_after_recovery"] = sparsity_of(reload(stage)[0])
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
            if options.method in ("distill", "share"):
                _distill(source, options, stage)
            else:
                details = _prune(source, options, stage, table)
            original, compressed = measure_pair(source, stage / MODEL_DIR, table)
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
