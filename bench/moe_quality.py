"""Does upcycling help? MiniLM-L6 fine-tuned on poem-sentiment as is (dense) and after sparse
upcycling (every FFN → 8 copies, top-2, renormalised, fresh router), same data, seed, optimizer
and number of steps, both through kelm's one training engine. Reports dev and test accuracy and
macro-F1 and the wall time of each run.

    KELM_DATA_DIR=../shared/data python bench/moe_quality.py [--json] [--steps 80] [--only dense|upcycled] [--experts 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402

from kelm.tasks import validate_task  # noqa: E402
from kelm.tasks.classification import ClassificationTask  # noqa: E402
from kelm.train.config import TrainConfig  # noqa: E402
from kelm.train.task import Batch  # noqa: E402
from kelm.train.trainer import Trainer  # noqa: E402


class UpcycledClassification(ClassificationTask):
    """The classification task on an upcycled encoder; the MoE auxiliary losses join the loss."""

    moe_settings: dict[str, Any] = {}

    def build_model(self) -> nn.Module:
        from kelm.lm.upcycle import upcycle_bert

        model = super().build_model()
        upcycle_bert(model, self.moe_settings)
        return model

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        from kelm.moe import moe_aux_loss

        loss, logs = super().loss(model, batch)
        aux = moe_aux_loss(model)
        return (loss + aux if aux is not None else loss), logs


def run(sparse: bool, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    table = {
        "name": "classification",
        "dataset": "poem-sentiment",
        "model": "minilm",
        "drop_labels": ["2"],
        "max_length": 128,
    }
    _, cfg = validate_task(table)
    task: ClassificationTask
    if sparse:
        UpcycledClassification.moe_settings = {"n_experts": args.experts, "top_k": 2}
        task = UpcycledClassification(cfg)  # type: ignore[arg-type]
    else:
        task = ClassificationTask(cfg)  # type: ignore[arg-type]
    train = TrainConfig(
        strategy="single",
        max_steps=args.steps,
        batch_size=16,
        lr=1e-4,
        weight_decay=0.01,
        schedule="linear",
        warmup_steps=10,
        log_every=50,
        threads=args.threads,
        tensorboard=False,
        seed=0,
    )
    t0 = time.perf_counter()
    summary = Trainer(task, train, out).fit()
    wall = time.perf_counter() - t0
    pick = ("accuracy", "macro_f1", "loss")
    return {
        "dev": {k: round(summary["valid"][k], 4) for k in pick},
        "test": {k: round(summary["test"][k], 4) for k in pick},
        "wall_seconds": round(wall, 1),
        "final_train_loss": round(summary["final_train_loss"], 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=("dense", "upcycled"), help="Run one arm (e.g. both arms in parallel).")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("KELM_PROGRESS", "0")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="kelm-moe-quality-") as tmp:
        if args.only is not None:
            arm = run(args.only == "upcycled", args, Path(tmp) / args.only)
            emit("moe_quality", {"steps": args.steps, "experts": args.experts, args.only: arm}, args.json)
            return
        dense = run(False, args, Path(tmp) / "dense")
        sparse = run(True, args, Path(tmp) / "sparse")
    results = {
        "steps": args.steps,
        "batch_size": 16,
        "experts": args.experts,
        "top_k": 2,
        "dense": dense,
        "upcycled": sparse,
        "test_accuracy_gain": round(sparse["test"]["accuracy"] - dense["test"]["accuracy"], 4),
        "test_macro_f1_gain": round(sparse["test"]["macro_f1"] - dense["test"]["macro_f1"], 4),
    }
    emit("moe_quality", results, args.json)


if __name__ == "__main__":
    main()
