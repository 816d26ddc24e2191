"""Four KGE training objectives on UMLS, 20 steps each: final train loss, test and valid MRR as JSON.

    KELM_DATA_DIR=../shared/data python bench/kge_objectives.py

Run it on two revisions (PYTHONPATH=<checkout>/src) to check that a refactor left every objective
bit-identical: 1-N, 1-vs-all, Bernoulli negative sampling without reciprocal relations, and shared
negatives with the N3 regularizer.
"""

import json
import tempfile

try:
    from kelm.app import run_training
except ImportError:
    from kelm.train import run_training
out = {}
for name, t in {
    "1n": {"training": "1-n"},
    "1va": {"training": "1-vs-all"},
    "nsb": {"training": "negative-sampling", "sampler": "bernoulli", "reciprocal": False, "num_negatives": 8},
    "nss": {
        "training": "negative-sampling",
        "sampler": "shared",
        "num_negatives": 8,
        "regularizer": "n3",
        "regularizer_weight": 0.01,
    },
}.items():
    with tempfile.TemporaryDirectory() as d:
        s = run_training(
            {
                "task": {"name": "link-prediction", "dataset": "umls", "dim": 16, **t},
                "train": {
                    "max_steps": 20,
                    "batch_size": 64,
                    "lr": 0.01,
                    "optimizer": "adam",
                    "schedule": "cosine",
                    "clip_grad_norm": 1.0,
                    "strategy": "single",
                    "threads": 1,
                    "tensorboard": False,
                    "eval_every": 10,
                },
            },
            d,
        )
        out[name] = [s["final_train_loss"], s["test"]["mrr"], s["valid"]["mrr"]]
print(json.dumps(out))
