"""Hybrid (text + structure) KG completion against structure-only and text-only.

    KELM_DATA_DIR=../shared/data HF_HUB_OFFLINE=1 python bench/hybrid.py [--parts umls,umls-inductive,codex-s]
        [--out DIR] [--reuse] [--umls-steps 60] [--codex-steps 60] [--batch-size 32] [--lr X] [--schedule S]
        [--codex-dim 512] [--codex-epochs 25] [--threads 1] [--json]

Per data set: the structure-only model (`kelm kge train` with ``configs/kge/<name>-complex.toml``),
then the text model (`kelm kgc train` with ``configs/kgc/<name>-minilm.toml``) with that KGE run
as ``hybrid_kge``. Its final validation ranks every α of the grid (0, 0.1, …, 1; α = 0 is
structure-only, α = 1 text-only) and keeps the best; the test split is ranked once under that α,
and under α = 0 and α = 1 for the structure-only and text-only rows (the same queries, filtered,
both sides, all entities). ``margin`` is hybrid − structure-only test MRR.

- ``umls``: transductive UMLS, entity descriptions as text.
- ``umls-inductive``: UMLS with 20% of the entities unseen in training (`kelm.kgc.inductive`,
  seed 0); the KGE model is trained on the same reduced training split (unseen entities are not
  in its vocabulary, so its score for them is its query's mean) with the valid triples among seen
  entities for early stopping; valid and test hold the triples touching an unseen entity.
- ``codex-s``: CoDEx-S, entity type labels as text ("human, politician"); ComplEx at
  ``--codex-dim`` for ``--codex-epochs`` epochs (early stopping on valid MRR, best weights kept).

Runs go to ``--out`` (a temporary folder by default); with ``--reuse`` a run folder that already
holds ``metrics.json`` is read instead of trained again. Every run uses ``--threads`` torch threads.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from common import emit, train_run

ROOT = Path(__file__).resolve().parents[1]
ROWS = (("structure-only", "structure/"), ("text-only", "text/"), ("hybrid", ""))


def _config(path: str, task: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    cfg = tomllib.loads((ROOT / path).read_text())
    return {"task": cfg["task"] | task, "train": cfg["train"] | train}


def _run(config: dict[str, Any], out: Path, reuse: bool) -> tuple[dict[str, Any], float]:
    """The run's metrics.json (trained now, or read with ``reuse``) and its wall seconds here."""
    t0 = time.perf_counter()
    if not (reuse and (out / "metrics.json").is_file()):
        train_run(config, str(out))
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - t0


def _inductive_kge_data(fraction: float, seed: int, folder: Path) -> Path:
    """The inductive training split of UMLS, its entities and relations only, and the valid triples
    among them, as a data-set folder."""
    from kelm.kg.datasets import load_graph
    from kelm.kg.io.writers import write_tsv
    from kelm.kg.model import KnowledgeGraph
    from kelm.kgc.inductive import inductive_split

    umls = load_graph("umls")
    train = inductive_split(umls, fraction, seed).kg.splits["train"]
    ents = {e for t in train for e in (t.head, t.tail)}
    rels = {t.relation for t in train}
    kg = KnowledgeGraph(name="umls-seen")
    kg.entities = {k: e for k, e in umls.entities.items() if k in ents}
    kg.relations = {k: r for k, r in umls.relations.items() if k in rels}
    kg.add_triples("train", train)
    kg.add_triples("valid", [t for t in umls.splits["valid"] if {t.head, t.tail} <= ents and t.relation in rels])
    write_tsv(kg, folder)
    return folder


def _rows(text_metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    test = text_metrics["test"]
    return {name: {k: round(test[prefix + k], 4) for k in ("mrr", "hits@1", "hits@10")} for name, prefix in ROWS}


def part(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Train (or reuse) the structure and text runs of one part and report its three rows."""
    threads = {"threads": args.threads}
    steps = args.codex_steps if name == "codex-s" else args.umls_steps
    text_train = threads | {"max_steps": steps, "batch_size": args.batch_size, "log_every": max(1, steps // 4)}
    text_train |= {"warmup_steps": max(1, steps // 10), "tensorboard": False}
    text_train |= {k: v for k, v in (("lr", args.lr), ("schedule", args.schedule)) if v is not None}
    text_task: dict[str, Any] = {"max_length": args.max_length}
    if name == "codex-s":
        kge_cfg = _config(
            "configs/kge/codex-s-complex.toml",
            {"dim": args.codex_dim},
            threads | {"epochs": args.codex_epochs, "tensorboard": False},
        )
        text_cfg_file = "configs/kgc/codex-s-minilm.toml"
    else:
        kge_task: dict[str, Any] = {}
        if name == "umls-inductive":
            data = root / "umls-seen"
            if not (args.reuse and data.is_dir()):
                _inductive_kge_data(args.inductive, args.inductive_seed, data)
            kge_task = {"dataset": str(data), "test_split": ""}
            text_task |= {"inductive": args.inductive, "inductive_seed": args.inductive_seed}
        kge_cfg = _config("configs/kge/umls-complex.toml", kge_task, threads | {"tensorboard": False})
        text_cfg_file = "configs/kgc/umls-minilm.toml"
    kge, kge_s = _run(kge_cfg, root / f"{name}-kge", args.reuse)
    text_task["hybrid_kge"] = str(root / f"{name}-kge")
    text, text_s = _run(_config(text_cfg_file, text_task, text_train), root / f"{name}-text", args.reuse)
    rows = _rows(text)
    out: dict[str, Any] = {
        "data": name,
        "alpha": text["valid"]["alpha"],
        "valid_mrr": {n: round(text["valid"][p + "mrr"], 4) for n, p in ROWS},
        "test": rows,
        "margin_mrr": round(rows["hybrid"]["mrr"] - rows["structure-only"]["mrr"], 4),
        "structure_run": {
            "model": f"complex dim {kge['config']['task']['dim']}",
            "epochs": kge["epoch"],
            "steps": kge["steps"],
            "own_test_mrr": round(kge["test"]["mrr"], 4) if kge.get("test") else None,
            "wall_seconds": round(kge_s, 1),
        },
        "text_run": {
            "model": text["config"]["task"]["model"],
            "entity_text": text["config"]["task"].get("entity_text", "description"),
            "steps": text["steps"],
            "batch_size": text["config"]["train"]["batch_size"],
            "max_length": text["config"]["task"]["max_length"],
            "train_loop_seconds": round(text["loop_seconds"], 1),
            "wall_seconds": round(text_s, 1),
        },
    }
    return out


def table(results: list[dict[str, Any]]) -> str:
    """A readable table: one block of three rows per data set."""
    lines = [f"{'data':<16}{'model':<16}{'MRR':>8}{'Hits@1':>8}{'Hits@10':>9}  note"]
    for r in results:
        for name, _ in ROWS:
            m = r["test"][name]
            note = f"alpha {r['alpha']:g} (valid), margin {r['margin_mrr']:+.4f}" if name == "hybrid" else ""
            lines.append(f"{r['data']:<16}{name:<16}{m['mrr']:>8.4f}{m['hits@1']:>8.4f}{m['hits@10']:>9.4f}  {note}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="umls,umls-inductive,codex-s")
    p.add_argument("--out", type=Path, default=None, help="folder of the runs (default: a temporary one)")
    p.add_argument("--reuse", action="store_true", help="read runs that already finished in --out")
    p.add_argument("--umls-steps", type=int, default=60, help="text-model steps on UMLS")
    p.add_argument("--codex-steps", type=int, default=60, help="text-model steps on CoDEx-S")
    p.add_argument("--batch-size", type=int, default=32, help="text-model batch")
    p.add_argument("--max-length", type=int, default=32, help="text-model tokens per text")
    p.add_argument("--lr", type=float, default=None, help="text-model learning rate (default: the config's)")
    p.add_argument("--schedule", default=None, help="text-model schedule (default: the config's)")
    p.add_argument("--codex-dim", type=int, default=512)
    p.add_argument("--codex-epochs", type=int, default=25)
    p.add_argument("--inductive", type=float, default=0.2)
    p.add_argument("--inductive-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true", help="one JSON line per data set instead of the summary")
    args = p.parse_args()
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(parts) - {"umls", "umls-inductive", "codex-s"})
    if unknown:
        p.error(f"unknown parts: {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="kelm-hybrid-") as tmp:
        root = args.out if args.out is not None else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        results = []
        for name in parts:
            results.append(part(name, args, root))
            emit("hybrid", results[-1], args.json)
    if not args.json:
        print(table(results))


if __name__ == "__main__":
    main()
