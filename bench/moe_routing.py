"""Knowledge-guided routing: do experts specialise by KG domain? A byte-level MoE GPT trained on
the UMLS entity descriptions twice through kelm's engine, with and without the domain embedding
in the router input, same data, seed and steps. Token domains: each description's entity gives
its semantic group to the whole line, and entities linked inside it (kelm's `EntityLinker`) give
their own (``--mentions-only``: only tokens of linked mentions have a domain). Reports, on the
held-out tail, the loss and perplexity (the task metric) and the specialisation of every MoE
layer's routing over the tokens with a domain (NMI between expert choice and domain, and the
share of each domain's token slots that go to its most used expert), averaged over layers.

    KELM_DATA_DIR=../shared/data python bench/moe_routing.py [--json] [--steps 600] [--only plain|routed]
        [--domain-std 1.0] [--mentions-only]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402

from kelm.app import run_training  # noqa: E402
from kelm.lm.gpt import load_gpt  # noqa: E402
from kelm.moe import moe_layers  # noqa: E402
from kelm.moe.domains import routing_table, specialisation  # noqa: E402
from kelm.tasks.causal_lm import CausalLMConfig, CausalLMTask  # noqa: E402

CORPUS = Path(__file__).resolve().parents[1] / "src/kelm/data/bundled/umls/entity2textlong.txt"


def task_table(routed: bool, experts: int, domain_std: float = 1.0, documents: bool = True) -> dict[str, Any]:
    return {
        "name": "causal-lm",
        "text": [str(CORPUS)],
        "seq_len": 64,
        "valid_fraction": 0.1,
        "d_model": 64,
        "n_layer": 2,
        "n_head": 4,
        "moe_experts": experts,
        "moe_top_k": 2,
        "moe_d_ff": 128,
        "moe_domain_routing": "umls" if routed else None,
        "moe_domain_documents": documents,
        "moe_domain_init_std": domain_std,
    }


@torch.no_grad()
def measure(model: torch.nn.Module, task: CausalLMTask, routed: bool) -> dict[str, float]:
    """Routing specialisation on the held-out windows (every token with a domain)."""
    model.eval()
    layers = moe_layers(model)
    tables = [torch.zeros(len(task.domain_names), layer.cfg.n_experts, dtype=torch.long) for layer in layers]
    current: list[torch.Tensor] = []

    def count(i: int) -> Any:
        def hook(_m: Any, _i: Any, out: Any) -> None:
            tables[i] += routing_table(out.experts, current[0], *tables[i].shape)

        return hook

    hooks = [layer.router.register_forward_hook(count(i)) for i, layer in enumerate(layers)]
    valid = task.eval_data()
    for start in range(0, len(valid), 64):
        batch = task.collate([valid[j] for j in range(start, min(start + 64, len(valid)))])
        ids, doms = batch["ids"][:, :-1], batch["domains"][:, :-1]
        current[:] = [doms.reshape(-1)]
        model(ids, doms) if routed else model(ids)
    for h in hooks:
        h.remove()
    per_layer = [specialisation(t) for t in tables]
    covered = float((task.domains >= 0).float().mean())
    out = {k: sum(s[k] for s in per_layer) / len(per_layer) for k in per_layer[0]}
    return {**out, "tokens_with_domain": covered}


def run(routed: bool, steps: int, experts: int, domain_std: float, documents: bool, out: Path) -> dict[str, Any]:
    train = {
        "strategy": "single",
        "threads": 1,
        "seed": 0,
        "max_steps": steps,
        "batch_size": 16,
        "lr": 3e-3,
        "warmup_steps": 30,
        "schedule": "cosine",
        "log_every": 50,
        "tensorboard": False,
    }
    t0 = time.perf_counter()
    summary = run_training({"task": task_table(routed, experts, domain_std, documents), "train": train}, out)
    wall = time.perf_counter() - t0
    task = CausalLMTask(CausalLMConfig(**task_table(True, experts, domain_std, documents)))
    spec = measure(load_gpt(out / "model"), task, routed)
    valid = summary["valid"]
    return {
        "valid_loss": valid["loss"],
        "valid_perplexity": valid["perplexity"],
        "nmi": spec["nmi"],
        "top_expert_share": spec["top_expert_share"],
        "tokens_with_domain": spec["tokens_with_domain"],
        "wall_seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--only", choices=("plain", "routed"))
    parser.add_argument("--domain-std", type=float, default=1.0, help="init std of the domain embeddings")
    parser.add_argument(
        "--mentions-only", action="store_true", help="domains only on linked mentions, not whole descriptions"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict[str, Any] = {"steps": args.steps, "experts": args.experts, "top_k": 2, "domain_std": args.domain_std}
    results["documents"] = not args.mentions_only
    with tempfile.TemporaryDirectory(prefix="kelm-moe-routing-") as tmp:
        for name in ("plain", "routed"):
            if args.only in (None, name):
                arm = (name == "routed", args.steps, args.experts, args.domain_std, not args.mentions_only)
                results[name] = run(*arm, Path(tmp) / name)
    emit("moe_routing", results, args.json)


if __name__ == "__main__":
    main()
