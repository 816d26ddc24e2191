"""The task contract, checked for every registered task (the pattern of PyKEEN's tests/cases.py).

`CASES` maps each name in `kelm.tasks.TASKS` to a function building a tiny ``[task]`` table (and
``[train]`` overrides) in a temporary folder. For each case the task is built from its table, its
model takes one optimizer step on a collated batch of two training samples, its ``[model]`` table
names a loadable kind, and one engine run exports a model folder that `load_model_folder` reloads
bit for bit. A task registered without a case fails `test_every_registered_task_has_a_case`.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kelm.app import run_training
from kelm.app.models import MODEL_KINDS, load_model_folder
from kelm.artifacts import read_model_table
from kelm.data import bundled_path
from kelm.tasks import TASKS, build_task, task_spec
from kelm.train.config import TrainConfig
from kelm.train.data import BatchRandom
from kelm.train.parallel import ParallelPlan
from kelm.train.task import Task
from kelm.train.trainer import seed_everything

UMLS = bundled_path("umls")
#: The engine settings every case starts from: one process, one thread, a step or two.
TRAIN: dict[str, Any] = {
    "strategy": "single",
    "threads": 1,
    "max_steps": 1,
    "batch_size": 2,
    "lr": 1e-2,
    "schedule": "constant",
    "log_every": 1,
    "tensorboard": False,
    "seed": 0,
}
TINY_BERT = {"model": "tiny-bert", "hidden_size": 32, "num_layers": 1, "num_heads": 2}

Case = tuple[dict[str, Any], dict[str, Any]]


# -- tiny data ------------------------------------------------------------------------------------
def umls_text(path: Path, lines: int, paragraphs: bool = False) -> Path:
    """The first ``lines`` UMLS entity descriptions (as paragraphs for the pretraining corpus)."""
    rows = (UMLS / "entity2textlong.txt").read_text(encoding="utf-8").splitlines()[:lines]
    texts = [row.split("\t", 1)[-1] for row in rows]
    path.write_text(("\n\n" if paragraphs else "\n").join(texts) + "\n", encoding="utf-8")
    return path


def sentiment_tsv(path: Path, n: int, seed: int) -> Path:
    """``id<TAB>text<TAB>label``: the label is which word family the sentence holds."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("pos", "neg")[i % 2]
        word = rng.choice(["glad", "joy", "love"] if label == "pos" else ["dark", "grief", "cold"])
        rows.append(f"{i}\tthe {word} river at night\t{label}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def conll(path: Path, n: int, seed: int) -> Path:
    """Sentences whose name after 'met' is a person and whose name after 'in' is a location."""
    rng = random.Random(seed)
    lines: list[str] = []
    for _ in range(n):
        person, place = rng.choice(["Alice", "Bob", "Carol"]), rng.choice(["Paris", "Oslo", "Lima"])
        sent = [("i", "O"), ("met", "O"), (person, "B-person"), ("in", "O"), (place, "B-location")]
        lines += [f"{w}\t{t}" for w, t in sent] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def squad(path: Path, n: int, seed: int) -> Path:
    """SQuAD v1.1: one paragraph per made-up country, asking for its capital."""
    rng = random.Random(seed)
    data = []
    for i in range(n):
        capital = rng.choice(["Oslo", "Lima", "Rome", "Cairo"])
        context = f"The capital of Land{i} is {capital}. People walk there in spring."
        qa = {
            "id": f"q{i}",
            "question": f"What is the capital of Land{i}?",
            "answers": [{"text": capital, "answer_start": context.index(capital)}],
        }
        data.append({"title": f"Land{i}", "paragraphs": [{"context": context, "qas": [qa]}]})
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return path


def fusion_data(folder: Path) -> Path:
    """Made-up entities in two classes known only to the graph; sentences name one entity each."""
    names = ["zorblat", "quimbex", "dravok", "miptul", "gashren", "fyokel", "prunsid", "blatdra"]
    cls = {n: "ab"[i % 2] for i, n in enumerate(names)}
    facts = [(n, "member_of", f"class_{c}") for n, c in cls.items()] + [(names[0], "near", names[3])]
    (folder / "kg.tsv").write_text("".join(f"{h}\t{r}\t{t}\n" for h, r, t in facts), encoding="utf-8")
    for split, members in {"train": names[:4], "dev": names[4:6], "test": names[6:]}.items():
        rows = [f"{split}{i}\tI saw the {n} yesterday.\t{cls[n]}" for i, n in enumerate(members)]
        (folder / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def kgqa_data(root: Path) -> tuple[Path, Path]:
    """A people/cities/countries graph in a LadybugDB store and 1-hop questions generated from it."""
    from kelm.kg.model import KnowledgeGraph, Triple
    from kelm.kg.store import open_store
    from kelm.kgqa.generator import GeneratorConfig, generate, write_generated
    from kelm.kgqa.graph import QAGraph

    rng = random.Random(0)
    kg = KnowledgeGraph("contract")
    cities, countries, firms = [f"city{i}" for i in range(3)], ["country0", "country1"], ["acme", "globex"]
    kg.add_triples("train", [Triple(c, "located_in", rng.choice(countries)) for c in cities])
    kg.add_triples("train", [Triple(f, "based_in", rng.choice(cities)) for f in firms])
    for p in range(12):
        kg.add_triples("train", [Triple(f"p{p}", "lives_in", rng.choice(cities))])
        kg.add_triples("train", [Triple(f"p{p}", "works_for", rng.choice(firms))])
    for e in kg.entities.values():
        e.label = e.id.replace("p", "Person ", 1) if e.id.startswith("p") else e.id.title()
    for r in kg.relations.values():
        r.label = r.id.replace("_", " ")
    store = root / "store"
    with open_store(store) as gs:
        gs.import_graph(kg, replace=True)
    cfg = GeneratorConfig(hops=(1,), per_entity=1)
    graph = QAGraph.from_kg(kg)
    write_generated(root / "questions", graph, generate(graph, cfg), cfg)
    return root / "questions", store


# -- one case per registered task -----------------------------------------------------------------
def case_causal_lm(tmp_path: Path) -> Case:
    text = umls_text(tmp_path / "corpus.txt", 12)
    return {"name": "causal-lm", "text": [str(text)], "seq_len": 16, "d_model": 32, "n_layer": 1, "n_head": 2}, {}


def case_link_prediction(tmp_path: Path) -> Case:
    table = {"name": "link-prediction", "dataset": "umls", "model": "complex", "dim": 8}
    # negative sampling: the case whose collate draws from the engine's BatchRandom
    return table | {"training": "negative-sampling", "num_negatives": 4}, {"eval_batch_size": 256}


def case_classification(tmp_path: Path) -> Case:
    files = {s: str(sentiment_tsv(tmp_path / f"{s}.tsv", n, i)) for i, (s, n) in enumerate([("train", 8), ("dev", 4)])}
    return {"name": "classification", **TINY_BERT, "max_length": 16, **files, "test": files["dev"]}, {}


def case_ner(tmp_path: Path) -> Case:
    files = {s: str(conll(tmp_path / f"{s}.conll", n, i)) for i, (s, n) in enumerate([("train", 6), ("dev", 3)])}
    return {"name": "ner", **TINY_BERT, "max_length": 16, **files, "test": files["dev"]}, {}


def case_qa(tmp_path: Path) -> Case:
    files = {s: str(squad(tmp_path / f"{s}.json", n, i)) for i, (s, n) in enumerate([("train", 4), ("dev", 2)])}
    table = {"name": "qa", **TINY_BERT, "max_length": 48, "doc_stride": 16, **files, "test": files["dev"]}
    return table, {}


def _pretrain(objective: str, tmp_path: Path) -> Case:
    text = umls_text(tmp_path / "corpus.txt", 8, paragraphs=True)
    table = {"name": objective, "text": [str(text)], "cache_dir": str(tmp_path / "cache"), "block_size": 16}
    return table | {k: v for k, v in TINY_BERT.items() if k != "model"}, {}


def case_mlm(tmp_path: Path) -> Case:
    return _pretrain("mlm", tmp_path)


def case_clm(tmp_path: Path) -> Case:
    return _pretrain("clm", tmp_path)


def case_kgqa(tmp_path: Path) -> Case:
    data, store = kgqa_data(tmp_path)
    table = {"name": "kgqa", "data": str(data), "store": str(store), "model": "kg", "hops": [1]}
    table |= {"encoder": "tiny-bert", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "dim": 16}
    return table | {"max_length": 16, "reasoning_hops": 2, "subgraph_hops": 2}, {}


def case_kg_enhanced(tmp_path: Path) -> Case:
    folder = fusion_data(tmp_path)
    table = {"name": "kg-enhanced-classification", **TINY_BERT, "max_length": 16, "link_encoder": None}
    table |= {s: str(folder / f"{s}.tsv") for s in ("train", "dev", "test")} | {"kg": str(folder / "kg.tsv")}
    return table | {"gnn_dim": 8, "gnn_layers": 1, "hops": 1, "fanout": 4, "dropout": 0.0}, {}


def case_text_kgc(tmp_path: Path) -> Case:
    table = {"name": "text-kgc", "dataset": "umls", **TINY_BERT, "max_length": 16, "encode_batch_size": 256}
    return table, {"eval_batch_size": 1024}


def case_frozen_text_kgc(tmp_path: Path) -> Case:
    table = {"name": "frozen-text-kgc", "dataset": "umls", "encoder": "tiny-bert", "max_length": 16}
    return table | {"max_words": 16, "dim": 8, "feature_cache": str(tmp_path / "features")}, {"eval_batch_size": 256}


def case_extraction(tmp_path: Path) -> Case:
    sentences = [
        {
            "tokens": ["Ann", "Lee", "works", "for", "Acme", "in", f"Town{i}", "."],
            "entities": [{"type": "Peop", "start": 0, "end": 2}, {"type": "Org", "start": 4, "end": 5}],
            "relations": [{"type": "Work_For", "head": 0, "tail": 1}],
        }
        for i in range(4)
    ]
    files = {}
    for split, items in (("train", sentences), ("dev", sentences[:2])):
        files[split] = str(tmp_path / f"{split}.json")
        Path(files[split]).write_text(json.dumps(items), encoding="utf-8")
    return {"name": "extraction", **TINY_BERT, "max_length": 16, **files, "max_width": 3}, {}


def case_distill(tmp_path: Path) -> Case:
    """A tiny classifier trained one step, distilled into a copy with one of its two layers."""
    table, _ = case_classification(tmp_path)
    teacher = tmp_path / "teacher"
    run_training({"train": TRAIN, "task": table | {"num_layers": 2}}, teacher)
    return {"name": "distill", "teacher": str(teacher), "layers": 1, "hidden_weight": 1.0}, {}


CASES: dict[str, Callable[[Path], Case]] = {
    "distill": case_distill,
    "extraction": case_extraction,
    "causal-lm": case_causal_lm,
    "link-prediction": case_link_prediction,
    "classification": case_classification,
    "ner": case_ner,
    "qa": case_qa,
    "mlm": case_mlm,
    "clm": case_clm,
    "kgqa": case_kgqa,
    "kg-enhanced-classification": case_kg_enhanced,
    "text-kgc": case_text_kgc,
    "frozen-text-kgc": case_frozen_text_kgc,
}


# -- helpers --------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def collate_two(task: Task) -> dict[str, Any]:
    """A batch of the first two training samples, built as the engine builds one."""
    data = task.train_data()
    assert len(data) >= 2, f"{task.name}: the case has fewer than two training samples"
    samples = [data[0], data[1]]
    if task.uses_batch_random:
        return task.collate(samples, rng=BatchRandom(torch.Generator().manual_seed(0), len(samples), 0, 1))
    return task.collate(samples)


def module_of(loaded: Any) -> nn.Module:
    """The nn.Module a loader returned: itself, the first module of a tuple, or its ``model``."""
    if isinstance(loaded, nn.Module):
        return loaded
    if isinstance(loaded, tuple):
        found = [x for x in loaded if isinstance(x, nn.Module)]
        assert found, f"loader returned a tuple without a module: {[type(x).__name__ for x in loaded]}"
        return found[0]
    module = getattr(loaded, "model", None)
    assert isinstance(module, nn.Module), f"{type(loaded).__name__} holds no nn.Module as .model"
    return module


# -- the tests ------------------------------------------------------------------------------------
def test_every_registered_task_has_a_case() -> None:
    assert set(TASKS.names()) == set(CASES), "add a case to CASES for every task in kelm.tasks.TASKS"


@pytest.mark.parametrize("name", sorted(CASES))
def test_task_contract(name: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    table, train_overrides = CASES[name](data)
    assert table["name"] == name
    train = TRAIN | train_overrides

    # the task builds from its table, as the registry's class
    task = build_task(table)
    assert isinstance(task, task_spec(name).factory) and isinstance(task, Task)
    assert task.name == name

    # a model, and one optimizer step on two collated training samples
    seed_everything(train["seed"])
    task.configure(TrainConfig(**train))
    model = task.build_model()
    assert isinstance(model, nn.Module)
    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert params, f"{name}: the model has no trainable parameters"
    before = {n: p.detach().clone() for n, p in params.items()}
    batch = collate_two(task)
    assert isinstance(batch, dict) and batch
    loss, logs = task.loss(model, batch)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0, loss
    assert loss.requires_grad and loss.grad_fn is not None
    assert math.isfinite(float(loss.detach())), float(loss.detach())
    assert isinstance(logs, dict) and all(math.isfinite(float(v)) for v in logs.values()), logs
    assert task.batch_weight(batch) > 0
    optimizer = torch.optim.Adam(list(params.values()), lr=1e-2)
    optimizer.zero_grad()
    loss.backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params.values()), "no gradient"
    optimizer.step()
    changed = [n for n, p in params.items() if not torch.equal(p.detach(), before[n])]
    assert changed, f"{name}: an optimizer step changed no parameter"

    # held-out batches evaluate to finite metrics that hold the monitored one
    assert task.monitor_mode in ("min", "max")
    assert isinstance(task.parallel_plan(), ParallelPlan)
    held_out = task.eval_data()
    if held_out is not None:
        assert len(held_out) > 0, f"{name}: the case has an empty validation set"
        model.eval()
        metrics = task.finalize_metrics(
            task.evaluate(model, [task.collate([held_out[i] for i in range(min(4, len(held_out)))])])
        )
        model.train()
        assert task.monitor in metrics, f"{name}: monitor {task.monitor!r} not in {sorted(metrics)}"
        assert all(math.isfinite(float(v)) for v in metrics.values()), metrics

    # the [model] table names a loader
    spec = task.model_config()
    assert isinstance(spec.get("model"), dict), spec
    kind = spec["model"].get("kind")
    assert kind in MODEL_KINDS, f"{name}: model kind {kind!r} is not in MODEL_KINDS ({MODEL_KINDS.names()})"

    # one engine run exports a folder that reloads exactly
    run = tmp_path / "run"
    summary = run_training({"task": table, "train": train}, run)
    assert summary["steps"] == train["max_steps"] and summary["task"] == name
    assert math.isfinite(summary["final_train_loss"])
    if held_out is not None:
        assert task.monitor in summary["valid"] and math.isfinite(float(summary["valid"][task.monitor]))
    model_dir = run / "model"
    assert (model_dir / "config.toml").is_file() and (model_dir / "model.safetensors").is_file()
    assert read_model_table(model_dir).get("kind") == kind
    got_kind, loaded = load_model_folder(run)
    assert got_kind == kind
    module = module_of(loaded)
    saved = load_file(str(model_dir / "model.safetensors"))
    assert saved, "no weights exported"
    state = module.state_dict()
    missing = sorted(set(saved) - set(state))
    assert not missing, f"{name}: exported weights the loaded model does not have: {missing[:5]}"
    for key, tensor in saved.items():
        got = state[key].detach().cpu()
        assert got.shape == tensor.shape and got.dtype == tensor.dtype, key
        assert torch.equal(got, tensor), f"{name}: {key} differs after reloading"
    # keys the file leaves out are tied copies of weights it holds
    stored = {state[k].data_ptr() for k in saved if state[k].numel()}
    untied = [k for k in set(state) - set(saved) if state[k].numel() and state[k].data_ptr() not in stored]
    assert not untied, f"{name}: the loaded model has weights the export lacks: {sorted(untied)[:5]}"
    # and what was exported is trained, not the initial model (the engine seeds as above)
    seed_everything(train["seed"])
    task.configure(TrainConfig(**train))
    initial = task.build_model().state_dict()
    comparable = [k for k in saved if k in initial and initial[k].shape == saved[k].shape]
    assert comparable, f"{name}: the exported keys do not match the task's model"
    assert any(not torch.equal(initial[k].detach().cpu(), saved[k]) for k in comparable), "exported untrained weights"
