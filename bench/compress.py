"""Compression side by side: a MiniLM-L6 teacher and its int8, distilled, pruned and weight-shared
copies, each measured in the same process as the teacher (latency interleaved).

    KELM_DATA_DIR=../shared/data python bench/compress.py --datasets poem-sentiment wnut17 \
        --runs runs/compress --json

    OMP_NUM_THREADS=1 KELM_DATA_DIR=../shared/data python bench/compress.py --datasets \
        --kge codex-s --runs runs/compress --json

For each data set: `kelm finetune configs/lm/<name>-minilm.toml` (reused when ``--runs`` holds
it), then one `kelm compress` per method below, then `kelm compress report` over all of them
(table, and ``compression.png`` in the first compressed run). For each ``--kge`` graph:
`kelm kge train configs/kge/<name>-complex.toml` (dim 1024), the same config at ``--dim 128``
alone (the baseline a student must beat), `kelm compress --method distill --dim 128` and
`--method int8`. ``--fusion umls-groups``: the KG-enhanced classifier of
`configs/fusion/umls-groups.toml` distilled into a 3-layer text-only student (``--alpha 1``: the
teacher's outputs alone, 480 steps). ``--kgc umls``: ComplEx (`configs/kge/umls-complex.toml`), a MiniLM
text-KGC hybrid over it (`configs/kgc/umls-minilm.toml`, ``--kgc-steps`` steps), and
`kelm compress --method distill` of that hybrid into a frozen-text scorer, beside the same scorer
trained alone (`configs/kgc/umls-frozen-minilm.toml`). Every step is the CLI a user runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import kelm

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "lm"
KGE_CONFIGS = CONFIGS.parent / "kge"
KGE_METHODS: dict[str, list[str]] = {
    "int8": ["--method", "int8"],
    "distill-128": ["--method", "distill", "--dim", "128", "--alpha", "0.9", "--temperature", "2"],
}
#: name → `kelm compress` flags
METHODS: dict[str, list[str]] = {
    "int8": ["--method", "int8", "--backend", "auto"],
    "distill-3": ["--method", "distill", "--layers", "3", "--hidden-weight", "1"],
    "prune-50": ["--method", "prune", "--sparsity", "0.5", "--epochs", "2"],
    "prune-heads-ffn": ["--method", "prune", "--heads", "0.5", "--ffn", "0.5", "--epochs", "3"],
    "share-3": ["--method", "share", "--layers", "3", "--hidden-weight", "1", "--lr", "2e-4"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="*", default=["poem-sentiment", "wnut17"])
    ap.add_argument("--kge", nargs="*", default=[], help="graphs with a configs/kge/<name>-complex.toml")
    ap.add_argument("--fusion", nargs="*", default=[], help="configs/fusion/<name>.toml runs to distil")
    ap.add_argument("--kgc", nargs="*", default=[], help="graphs with configs/kge/<name>-complex.toml and kgc configs")
    ap.add_argument("--kgc-steps", type=int, default=60, help="training steps of the text-KGC teacher")
    ap.add_argument("--runs", type=Path, default=Path("runs/compress"))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = {}
    for name in args.datasets:
        teacher = args.runs / f"{name}-teacher"
        if not (teacher / "metrics.json").is_file():
            kelm("finetune", str(CONFIGS / f"{name}-minilm.toml"), "--out", str(teacher))
        outs = []
        for method in args.methods:
            out = args.runs / f"{name}-{method}"
            if not (out / "compression.json").is_file():
                kelm("compress", str(teacher), *METHODS[method], "--out", str(out))
            outs.append(str(out))
        rows = json.loads(kelm("compress", "report", *outs, "--json"))
        results[name] = rows
        if not args.json:
            print(f"## {name}")
            print(kelm("compress", "report", *outs))
    for name in args.kge:
        teacher, alone = args.runs / f"{name}-complex", args.runs / f"{name}-complex-128"
        config = str(KGE_CONFIGS / f"{name}-complex.toml")
        if not (teacher / "metrics.json").is_file():
            kelm("kge", "train", config, "--out", str(teacher))
        if not (alone / "metrics.json").is_file():
            kelm("kge", "train", config, "--dim", "128", "--out", str(alone))
        outs = []
        for method, flags in KGE_METHODS.items():
            out = args.runs / f"{name}-{method}"
            if not (out / "compression.json").is_file():
                kelm("compress", str(teacher), *flags, "--out", str(out))
            outs.append(str(out))
        rows = json.loads(kelm("compress", "report", *outs, "--json"))
        test = json.loads((alone / "metrics.json").read_text())["test"]
        rows.append({"run": str(alone), "method": "dim 128 alone", "metric": "mrr", "value": test["mrr"]})
        results[name] = rows
        if not args.json:
            print(f"## {name}")
            print(kelm("compress", "report", *outs))
            print(f"dim 128 trained alone: test MRR {test['mrr']:.4f}")
    for name in args.fusion:
        teacher, out = args.runs / f"{name}-fused", args.runs / f"{name}-text-3"
        if not (teacher / "metrics.json").is_file():
            kelm("train", str(CONFIGS.parent / "fusion" / f"{name}.toml"), "--out", str(teacher))
        if not (out / "compression.json").is_file():
            flags = ["-m", "distill", "--layers", "3", "--alpha", "1", "--max-steps", "480"]
            kelm("compress", str(teacher), *flags, "--out", str(out))
        results[f"{name}-fusion"] = json.loads(kelm("compress", "report", str(out), "--json"))
        if not args.json:
            print(kelm("compress", "report", str(out)))
    for name in args.kgc:
        kge, text = args.runs / f"{name}-kgc-complex", args.runs / f"{name}-kgc-text"
        alone, out = args.runs / f"{name}-frozen-alone", args.runs / f"{name}-frozen-distilled"
        if not (kge / "metrics.json").is_file():
            kelm("kge", "train", str(KGE_CONFIGS / f"{name}-complex.toml"), "--out", str(kge))
        if not (text / "metrics.json").is_file():
            config = str(CONFIGS.parent / "kgc" / f"{name}-minilm.toml")
            steps = str(args.kgc_steps)
            kelm("kgc", "train", config, "--hybrid-kge", str(kge), "--max-steps", steps, "--out", str(text))
        if not (alone / "metrics.json").is_file():
            kelm("train", str(CONFIGS.parent / "kgc" / f"{name}-frozen-minilm.toml"), "--out", str(alone))
        if not (out / "compression.json").is_file():
            flags = ["-m", "distill", "--dim", "256", "--alpha", "0.9", "--temperature", "2"]
            kelm("compress", str(text), *flags, "--out", str(out))
        rows = json.loads(kelm("compress", "report", str(out), "--json"))
        test = json.loads((alone / "metrics.json").read_text())["test"]
        rows.append({"run": str(alone), "method": "frozen-text alone", "metric": "mrr", "value": test["mrr"]})
        results[f"{name}-kgc"] = rows
        if not args.json:
            print(kelm("compress", "report", str(out)))
            print(f"frozen-text trained alone: test MRR {test['mrr']:.4f}")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
