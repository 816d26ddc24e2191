"""The main job, offline: structure-only, text-based and hybrid KG completion on bundled UMLS.

1. The bundled UMLS graph (135 entities with names and descriptions, 46 relations) is imported
   into the embedded LadybugDB store, and the graph the models learn from is the store's export.
2. Two settings: the standard (transductive) split, and an inductive split where 20% of the
   entities (seed 0, `kelm.kgc.inductive`) never occur in training.
3. In each, three models train through the one `Trainer`: ComplEx (structure only, 1-N), a
   text-conditioned scorer over frozen MiniLM features (`kelm.kgc.frozen_text`: the encoder
   reads every entity's name and description once, and only a projection plus relation vectors
   are learnt, so unseen entities are scored from their description), and their hybrid
   (z-scored mix, ``α`` chosen on validation MRR, `kelm.kgc.hybrid_fit`).
4. Every model is saved under ``OUT/<setting>/<model>``; ``OUT/metrics.json`` holds a row per
   model and setting (filtered test MRR, Hits@1, Hits@10, seconds, folder).
5. Three sample queries are answered by the hybrids (training facts left out, so the answers are
   predictions), each answer with the fact paths of the store that connect the query entity to
   it; one query is about an entity unseen in inductive training.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kelm.atomic import write_text_atomic
from kelm.kg.importer import import_source, open_source
from kelm.kg.model import KnowledgeGraph
from kelm.kg.store import open_store
from kelm.kg.store.base import ImportReport, StoreStats

DEMO_DATASET = "umls"
INDUCTIVE_FRACTION, INDUCTIVE_SEED = 0.2, 0
SETTINGS = ("transductive", "inductive")
MODELS = ("structure", "text", "hybrid")
#: (head id, relation id) of the sample queries on the standard split
SAMPLE_QUERIES = (("virus", "causes"), ("pharmacologic_substance", "treats"))
TOP_K, EVIDENCE_HOPS, EVIDENCE_PATHS = 3, 2, 2


@dataclass(frozen=True)
class Budget:
    """Training length: ComplEx epochs and evaluation period, text-scorer steps and evaluation period."""

    kge_epochs: int
    kge_eval_every: int
    text_steps: int
    text_eval_every: int


FULL = Budget(kge_epochs=200, kge_eval_every=200, text_steps=1000, text_eval_every=50)
QUICK = Budget(kge_epochs=40, kge_eval_every=200, text_steps=200, text_eval_every=50)


@dataclass
class Row:
    model: str
    setting: str
    mrr: float
    hits_at_1: float
    hits_at_10: float
    seconds: float
    path: str


@dataclass
class Answer:
    id: str
    label: str
    score: float
    split: str | None  # the split holding (head, relation, answer): valid, test, removed (inductive), or None
    paths: list[list[tuple[str, str, str]]]  # other facts linking head and answer


@dataclass
class QueryResult:
    setting: str
    head: str
    relation: str
    unseen: bool  # the head is unseen in inductive training
    answers: list[Answer]

    @property
    def text(self) -> str:
        return f"({self.head}, {self.relation}, ?)"


@dataclass
class DemoResult:
    store: Path
    out: Path
    report: ImportReport
    stats: StoreStats
    rows: list[Row]
    alpha: dict[str, float]
    unseen: int
    queries: list[QueryResult]
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.stages.values())


@contextmanager
def _stage(stages: dict[str, float], name: str, progress: Callable[[str], None]) -> Iterator[None]:
    progress(name)
    t0 = time.perf_counter()
    yield
    stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0


def _train_config(budget: Budget, text: bool, threads: int | None) -> Any:
    from kelm.train.config import TrainConfig

    common = {"strategy": "single", "tensorboard": False, "threads": threads, "early_stopping_patience": 5}
    if text:
        return TrainConfig(
            optimizer="adamw", lr=3e-3, schedule="constant", clip_grad_norm=100.0, batch_size=256,
            max_steps=budget.text_steps, eval_every=budget.text_eval_every, log_every=50, **common,
        )  # fmt: skip
    return TrainConfig(
        optimizer="adagrad", lr=0.1, schedule="constant", clip_grad_norm=100.0, batch_size=128,
        epochs=budget.kge_epochs, eval_every=budget.kge_eval_every, log_every=200, **common,
    )  # fmt: skip


def _structure_task(kg: KnowledgeGraph) -> Any:
    """ComplEx 1-N with reciprocal relations: `configs/kge/umls-complex.toml`."""
    from kelm.tasks.link_prediction import LinkPredictionConfig, LinkPredictionTask

    cfg = LinkPredictionConfig(
        dataset=DEMO_DATASET, model="complex", dim=256, training="1-n", reciprocal=True, loss="ce",
        regularizer="n3", regularizer_weight=0.005,
    )  # fmt: skip
    return LinkPredictionTask(cfg, kg)


def _text_task(kg: KnowledgeGraph, inductive: bool, cache: Path) -> Any:
    from kelm.tasks.frozen_text_kgc import FrozenTextKGCConfig, FrozenTextKGCTask

    cfg = FrozenTextKGCConfig(
        dataset=DEMO_DATASET,
        feature_cache=str(cache),
        inductive=INDUCTIVE_FRACTION if inductive else None,
        inductive_seed=INDUCTIVE_SEED,
    )
    return FrozenTextKGCTask(cfg, kg)


def _fit(task: Any, train_cfg: Any, folder: Path) -> dict[str, Any]:
    """Train into ``folder.partial``, then move it over ``folder`` (a previous demo's copy)."""
    from kelm.train.trainer import Trainer

    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    run_config = {"train": train_cfg.model_dump(), "task": task.cfg.model_dump()}
    trainer = Trainer(task, train_cfg, partial, run_config=run_config)
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return summary


def _row(model: str, setting: str, metrics: dict[str, float], seconds: float, path: Path) -> Row:
    return Row(
        model, setting, float(metrics["mrr"]), float(metrics["hits@1"]), float(metrics["hits@10"]), seconds, str(path)
    )


def _unseen_query(kg: KnowledgeGraph, unseen: frozenset[str]) -> tuple[str, str]:
    """The unseen entity with the most test facts as head, and its most frequent test relation."""
    heads = Counter(t.head for t in kg.splits.get("test", []) if t.head in unseen)
    head = min(heads, key=lambda e: (-heads[e], e))
    rels = Counter(t.relation for t in kg.splits["test"] if t.head == head)
    return head, min(rels, key=lambda r: (-rels[r], r))


def _answer(
    scoring: Any, graph: Any, data: KnowledgeGraph, ids: list[str], rel_ids: list[str], head: str, rel: str
) -> list[Answer]:
    """The top answers of ``(head, rel, ?)`` that are not training facts of ``data`` (the setting's
    graph), each with the split of ``data`` that holds it, if any, and the shortest paths of the
    store's other facts (the asked triple itself left out) that connect ``head`` to it."""
    from kelm.kgqa.evidence import evidence_paths

    with torch.no_grad():
        scores = scoring.score_t(torch.tensor([ids.index(head)]), torch.tensor([rel_ids.index(rel)]))[0]
    facts = {(t.head, t.relation, t.tail): name for name, triples in data.splits.items() for t in triples}
    answers: list[Answer] = []
    for k in scores.argsort(descending=True).tolist():
        eid = ids[k]
        split = facts.get((head, rel, eid))
        if split == "train":
            continue
        asked = (graph.by_id[head], graph.rel_ids.index(rel), graph.by_id[eid])
        paths = evidence_paths(graph, asked[0], asked[2], EVIDENCE_HOPS, limit=EVIDENCE_PATHS, exclude={asked})
        answers.append(Answer(eid, data.entities[eid].label or eid, float(scores[k]), split, paths))
        if len(answers) == TOP_K:
            break
    return answers


@dataclass
class _Setting:
    rows: list[Row]
    alpha: float
    hybrid: Any  # HybridScoring
    text: Any  # FrozenTextModel


def _train_setting(
    setting: str,
    kg: KnowledgeGraph,
    inductive_kg: KnowledgeGraph,
    out: Path,
    budget: Budget,
    threads: int | None,
    stages: dict[str, float],
    say: Callable[[str], None],
) -> _Setting:
    """Structure, text and hybrid models of one setting, trained and saved under ``out/setting``."""
    from kelm.kgc.frozen_text import load_frozen_text
    from kelm.kgc.hybrid_fit import choose_alpha, save_hybrid
    from kelm.kge.evaluation import FilteredRankEvaluator
    from kelm.kge.mixing import HybridScoring, load_structural

    base = out / setting
    base.mkdir(parents=True, exist_ok=True)
    with _stage(stages, f"{setting}: structure (ComplEx)", say):
        t0 = time.perf_counter()
        data = kg if setting == "transductive" else inductive_kg
        s_sum = _fit(_structure_task(data), _train_config(budget, False, threads), base / "structure")
        s_sec = time.perf_counter() - t0
    with _stage(stages, f"{setting}: text (frozen MiniLM + ComplEx head)", say):
        t0 = time.perf_counter()
        task = _text_task(kg, setting == "inductive", out / "cache")
        t_sum = _fit(task, _train_config(budget, True, threads), base / "text")
        t_sec = time.perf_counter() - t0
    with _stage(stages, f"{setting}: hybrid (alpha on validation)", say):
        t0 = time.perf_counter()
        text = load_frozen_text(base / "text")
        struct = load_structural(base / "structure", text.entity_ids, text.relation_ids)
        evaluator = FilteredRankEvaluator(task.known, task.tensors.num_entities)
        choice = choose_alpha(evaluator, text.scoring(), struct, task.valid_triples)
        save_hybrid(base / "hybrid", base / "text" / "model", base / "structure" / "model", choice)
        hybrid = HybridScoring(text.scoring(), struct, choice.alpha)
        with torch.no_grad():
            h_test = evaluator.rank(hybrid, task.test_triples).metrics()
        h_sec = time.perf_counter() - t0 + s_sec + t_sec
    rows = [
        _row("structure", setting, s_sum["test"], s_sec, base / "structure"),
        _row("text", setting, t_sum["test"], t_sec, base / "text"),
        _row("hybrid", setting, h_test, h_sec, base / "hybrid"),
    ]
    return _Setting(rows, choice.alpha, hybrid, text)


def run_demo(
    store: str | Path,
    out: str | Path,
    quick: bool = False,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the whole demo (see the module doc); ``quick`` trains for a fraction of the full budget."""
    import torch.distributed as dist

    from kelm.data import bundled_path
    from kelm.kgc.inductive import inductive_split
    from kelm.kgqa.graph import QAGraph
    from kelm.train.distributed import shutdown

    say = progress or (lambda _msg: None)
    budget, out = (QUICK if quick else FULL), Path(out)
    if threads:
        torch.set_num_threads(threads)
    stages: dict[str, float] = {}
    owns_group = not dist.is_initialized()
    with _stage(stages, "import into LadybugDB", say):
        with open_store(store, backend="ladybug") as gs:
            report = import_source(gs, open_source(bundled_path(DEMO_DATASET)), replace=True)
            stats = gs.stats()
            kg = gs.export(DEMO_DATASET)
        graph = QAGraph.from_kg(kg)
    split = inductive_split(kg, INDUCTIVE_FRACTION, INDUCTIVE_SEED)
    with _stage(stages, "text features (frozen MiniLM)", say):
        _text_task(kg, False, out / "cache")  # encodes every entity once; later tasks read the cache
    rows: list[Row] = []
    alpha: dict[str, float] = {}
    hybrids: dict[str, Any] = {}
    try:
        for setting in SETTINGS:
            trained = _train_setting(setting, kg, split.kg, out, budget, threads, stages, say)
            rows += trained.rows
            alpha[setting], hybrids[setting] = trained.alpha, (trained.hybrid, trained.text)
    finally:
        if owns_group:
            shutdown()
    with _stage(stages, "sample queries with evidence", say):
        queries = []
        asked = [("transductive", h, r, False) for h, r in SAMPLE_QUERIES]
        asked.append(("inductive", *_unseen_query(split.kg, split.unseen), True))
        for setting, head, rel, unseen in asked:
            scoring, text = hybrids[setting]
            data = kg if setting == "transductive" else split.kg
            answers = _answer(scoring, graph, data, text.entity_ids, text.relation_ids, head, rel)
            rel_label = kg.relations[rel].label or rel
            queries.append(QueryResult(setting, kg.entities[head].label or head, rel_label, unseen, answers))
    result = DemoResult(Path(store), out, report, stats, rows, alpha, len(split.unseen), queries, stages)
    write_metrics(result)
    return result


def write_metrics(res: DemoResult) -> Path:
    """``OUT/metrics.json``: one row per model and setting, plus α, stage times and the queries."""
    payload = {
        "dataset": DEMO_DATASET,
        "store": str(res.store),
        "stats": res.stats.to_dict(),
        "import_seconds": res.report.seconds,
        "inductive": {"fraction": INDUCTIVE_FRACTION, "seed": INDUCTIVE_SEED, "unseen_entities": res.unseen},
        "rows": [asdict(r) for r in res.rows],
        "alpha": res.alpha,
        "stage_seconds": res.stages,
        "total_seconds": res.seconds,
        "queries": [asdict(q) | {"query": q.text} for q in res.queries],
    }
    path = res.out / "metrics.json"
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
    return path


__all__ = ["DEMO_DATASET", "FULL", "QUICK", "Budget", "DemoResult", "Row", "run_demo"]
