"""What `kelm compress` measures of a model folder, original and compressed alike: size on disk,
parameters, the task metric on the test split, and latency at batch 1 and 32, timed side by side."""

from __future__ import annotations

import os
import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kelm.artifacts import CONFIG
from kelm.config import read_toml
from kelm.errors import DataError

LATENCY_SAMPLES = 64
MIN_TIMINGS = 20
HF_TASKS = ("classification", "ner")
KGE_TASKS = ("link-prediction",)
FUSED_TASKS = ("kg-enhanced-classification",)
#: Scorers of graphs whose test metrics are read from their run's final evaluation.
KGC_TASKS = ("text-kgc", "frozen-text-kgc")
MEASURED_TASKS = HF_TASKS + KGE_TASKS + FUSED_TASKS + KGC_TASKS


@dataclass
class Measured:
    """A model folder loaded for measurement: one forward call, the batches it is timed on (batch
    1 and 32, with how many items each pass holds), and the record measured so far."""

    forward: Callable[[Any], Any]
    batches: dict[str, list[Any]]
    items: dict[str, int]
    record: dict[str, Any]


def task_table(folder: Path) -> dict[str, Any]:
    """The ``[task]`` table that rebuilds the data and metrics of the model in ``folder``: a
    distilled student's is its teacher's task (``[model] task_table``); a KGE student's, without
    its teacher."""
    data = read_toml(folder / CONFIG)
    spec = data.get("model", {})
    table = spec.get("task_table") if isinstance(spec.get("task_table"), dict) else data.get("task")
    if not isinstance(table, dict) or table.get("name") not in MEASURED_TASKS:
        raise DataError(f"no [task] table of {', '.join(MEASURED_TASKS)} to evaluate with", folder / CONFIG)
    return {k: v for k, v in table.items() if k != "teacher"}


def _base_record(folder: Path, model: Any, monitor: str, metrics: dict[str, Any], split: str) -> dict[str, Any]:
    from kelm.compress.measure import folder_bytes, parameter_count, weight_bytes

    return {
        "size_bytes": folder_bytes(folder),
        "weight_bytes": weight_bytes(folder),
        "parameters": parameter_count(model),
        "metric": {"name": monitor, "value": metrics.get(monitor), "split": split},
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float)},
    }


def _split_samples(task: Any, folder: Path) -> tuple[str, list[Any]]:
    split = "test" if task.test_data() is not None else "dev"
    samples = list(task.test_data() if split == "test" else task.eval_data() or [])
    if not samples:
        raise DataError("no test or dev split to measure on", folder / CONFIG)
    return split, samples


def _task_of(table: dict[str, Any]) -> Any:
    from kelm.tasks import build_task

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_task(table)


def _text_measured(folder: Path, task: Any, model: Any, forward: Callable[[Any], Any]) -> Measured:
    """Test (or dev) metrics of a text model over batches of 32, and its batch-1 and batch-32 inputs."""
    split, samples = _split_samples(task, folder)
    batches = [task.collate(samples[i : i + 32]) for i in range(0, len(samples), 32)]
    with torch.no_grad():
        metrics = task.finalize_metrics(task.evaluate(model, batches))
    singles = [task.collate([s]) for s in samples[:LATENCY_SAMPLES]]
    full = [b for b in batches if len(b["input_ids"]) == 32] or batches
    items = {"batch_1": len(singles), "batch_32": sum(len(b["input_ids"]) for b in full)}
    record = _base_record(folder, model, task.monitor, metrics, split)
    return Measured(forward, {"batch_1": singles, "batch_32": full}, items, record)


def load_hf(folder: Path, table: dict[str, Any]) -> Measured:
    from kelm.lm.batching import model_inputs
    from kelm.lm.hf import load_finetuned

    task = _task_of(table | {"model": str(folder)})
    model, _, _ = load_finetuned(folder)
    return _text_measured(folder, task, model, lambda b: model(**model_inputs(b)))


def load_kge_measured(folder: Path, table: dict[str, Any]) -> Measured:
    """A KGE folder: filtered test ranking; latency of scoring all entities for tail queries."""
    from kelm.kge.folder import load_kge
    from kelm.tasks import build_task

    task = build_task(table)
    model, _ = load_kge(folder)
    split, samples = _split_samples(task, folder)
    with torch.no_grad():
        metrics = task.finalize_metrics(task.evaluate(model, [task.collate(samples)]))
    triples = torch.stack(samples)
    singles = [triples[i : i + 1] for i in range(min(LATENCY_SAMPLES, len(triples)))]
    full = [triples[i : i + 32] for i in range(0, len(triples) - 31, 32)][:LATENCY_SAMPLES] or [triples]
    items = {"batch_1": len(singles), "batch_32": sum(len(b) for b in full)}
    record = _base_record(folder, model, task.monitor, metrics, split)
    return Measured(lambda b: model("score_t", b[:, 0], b[:, 1]), {"batch_1": singles, "batch_32": full}, items, record)


def load_fused_measured(folder: Path, table: dict[str, Any]) -> Measured:
    """A KG-enhanced classifier: test metrics and latency of the fused model over collated batches
    (texts already linked and their subgraphs retrieved: the LM, GNN and fusion alone are timed)."""
    from kelm.train.export import load_weights

    task = _task_of(table)
    model = load_weights(task.build_model(), folder).eval()
    return _text_measured(folder, task, model, lambda b: model(**b))


def load_kgc_measured(folder: Path, table: dict[str, Any]) -> Measured:
    """A text-KGC or frozen-text scorer: its run's final test ranking (the same filtered ranker);
    latency of scoring all entities for tail queries (entity texts embedded once, beforehand)."""
    import json

    from kelm.kg.datasets import load_graph
    from kelm.kg.tensors import TripleTensors

    path = folder.parent / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))["test"]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"no test metrics of the run ({err})", path) from None
    if table["name"] == "text-kgc":
        from kelm.kgc.text_kgc import load_text_kgc

        trained = load_text_kgc(folder)
        model, scoring = trained.model, trained.scoring()
    else:
        from kelm.kgc.frozen_text import load_frozen_text

        frozen = load_frozen_text(folder)
        model, scoring = frozen.model, frozen.scoring()
    graph = TripleTensors.from_graph(load_graph(table["dataset"], table.get("data_dir")))
    triples = graph.triples[table.get("test_split") or "test"]
    singles = [triples[i : i + 1] for i in range(min(LATENCY_SAMPLES, len(triples)))]
    full = [triples[i : i + 32] for i in range(0, len(triples) - 31, 32)][:LATENCY_SAMPLES] or [triples]
    items = {"batch_1": len(singles), "batch_32": sum(len(b) for b in full)}
    metrics = {k: v for k, v in metrics.items() if "/" not in k}
    record = _base_record(folder, model, "mrr", metrics, "test")
    return Measured(lambda b: scoring.score_t(b[:, 0], b[:, 1]), {"batch_1": singles, "batch_32": full}, items, record)


LOADERS: dict[str, Callable[[Path, dict[str, Any]], Measured]] = {
    **dict.fromkeys(HF_TASKS, load_hf),
    **dict.fromkeys(KGE_TASKS, load_kge_measured),
    **dict.fromkeys(FUSED_TASKS, load_fused_measured),
    **dict.fromkeys(KGC_TASKS, load_kgc_measured),
}


def load_measured(folder: Path, table: dict[str, Any]) -> Measured:
    return LOADERS[table["name"]](folder, table)


def time_all(models: dict[str, Measured]) -> None:
    """Latency at batch 1 and 32 of every model, interleaved (`interleaved_latency`), into each record."""
    from kelm.compress.measure import interleaved_latency

    for name in ("batch_1", "batch_32"):
        runs = {k: (m.forward, m.batches[name]) for k, m in models.items()}
        first = next(iter(models.values()))
        rounds = max(1, -(-MIN_TIMINGS // len(first.batches[name])))
        for k, timed in interleaved_latency(runs, first.items[name], rounds).items():
            models[k].record.setdefault("latency", {})[name] = timed


def measure_pair(
    original: Path, compressed: Path, table: dict[str, Any], compressed_table: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The records of an original and its compressed copy (measured under its own task table when it
    is of another kind, e.g. the text student of a KG-enhanced teacher), latency timed side by side."""
    other = compressed_table if compressed_table is not None else table
    models = {"original": load_measured(original, table), "compressed": load_measured(compressed, other)}
    time_all(models)
    return models["original"].record, models["compressed"].record


def ratios(original: dict[str, Any], compressed: dict[str, Any]) -> dict[str, float | None]:
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


__all__ = ["Measured", "load_measured", "machine", "measure_pair", "ratios", "task_table", "time_all"]
