"""What moves the rules' ranking on FB15k-237, on a seeded sample of its test facts.

    # the rules a relation is answered with: the N best of each kind
    KELM_DATA_DIR=../shared/data python bench/rules_ablation.py caps runs/fb-rules --per-kind 5000 20000
    # mining settings, each mined for --seconds by one process, then ranked
    KELM_DATA_DIR=../shared/data python bench/rules_ablation.py mining --seconds 60 \
        '{"relation_sampling": "uniform"}' '{"relation_sampling": "facts"}' \
        '{"max_cyclic_length": 2, "max_acyclic_length": 1}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from kelm.kg.datasets import load_graph
from kelm.kge.evaluation import FilteredRankEvaluator
from kelm.reason.apply import RuleScorer
from kelm.reason.folder import index_graph, open_folder
from kelm.reason.mining import MiningConfig, mine


def sample(tt, n: int, seed: int = 0) -> torch.Tensor:
    test = tt.triples["test"]
    test = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]]
    return test[torch.argsort(test[:, 1], stable=True)]


def report(label: str, metrics: dict, seconds: float, **extra) -> None:
    row = {"setting": label, **extra, **{k: round(float(metrics[k]), 4) for k in ("mrr", "hits@1", "hits@10")}}
    print(json.dumps(row | {"ranking_s": round(seconds, 1)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["caps", "mining"])
    ap.add_argument("rest", nargs="*", help="caps: a rules folder; mining: MiningConfig fields as JSON, one per run")
    ap.add_argument("--dataset", default="fb15k-237")
    ap.add_argument("--sample", type=int, default=3000)
    ap.add_argument("--per-kind", type=int, nargs="+", default=[5000])
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_intermixed_args()
    kg = load_graph(args.dataset, unseen="keep")
    if args.mode == "caps":
        rule_set = open_folder(Path(args.rest[0]), kg)
        graph, tt, rules = rule_set.graph, rule_set.tensors, rule_set.rules
        settings = [(f"per kind {n}", {"max_rules_per_kind": n}) for n in args.per_kind]
    else:
        graph, tt = index_graph(kg)
        rules, settings = [], [(spec, json.loads(spec)) for spec in args.rest]
    evaluator = FilteredRankEvaluator(torch.cat(list(tt.triples.values())), tt.num_entities)
    queries = sample(tt, args.sample)
    for label, fields in settings:
        found = rules
        if args.mode == "mining":
            found = mine(graph, MiningConfig(seconds=args.seconds, **fields))
            fields = {}
        start = time.monotonic()
        metrics = evaluator.evaluate(RuleScorer(graph, found, **fields), queries)
        report(label, metrics, time.monotonic() - start, rules=len(found))


if __name__ == "__main__":
    main()
