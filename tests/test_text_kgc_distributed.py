"""Negatives gathered across ranks: 2 gloo processes equal one process on the same global batch.

Each rank embeds its share of a global batch; the tails of every rank are gathered with
gradient, so every query meets the whole global batch (and the same pre-batch queue) as
negatives. The loss averaged over ranks and the DDP-averaged gradients must equal the loss and
gradients of one process on the whole global batch, over two batches (the second one with
pre-batch negatives from the first).
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from distributed_harness import run_distributed
from test_text_kgc_helpers import tiny_cfg, toy_kg

from kelm.kgc.infonce import PreBatchQueue
from kelm.tasks.text_kgc import TextKGCTask
from kelm.train.config import TrainConfig
from kelm.train.distributed import DistInfo
from kelm.train.strategies import DDPStrategy

GLOBAL = [list(range(0, 16)), list(range(16, 32))]


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n.removeprefix("module."): p.grad.detach().clone() for n, p in model.named_parameters()}


def _worker(rank: int, world: int) -> dict[str, object]:
    task = TextKGCTask(tiny_cfg(pre_batch=2, gather_negatives=False), kg=toy_kg())
    torch.manual_seed(0)
    model = task.build_model().eval()  # eval: no dropout, so both runs see the same function
    reference = copy.deepcopy(model)
    ref_losses = []
    for idx in GLOBAL:  # one process, whole global batches, no gathering
        loss, _ = task.loss(reference, task.collate(idx))
        loss.backward()
        ref_losses.append(float(loss))
    task.cfg = task.cfg.model_copy(update={"gather_negatives": True})
    task.queue = PreBatchQueue(2)
    ddp = DDPStrategy(TrainConfig(strategy="ddp", threads=1), DistInfo(rank, world, rank, torch.device("cpu")))
    wrapped = ddp.wrap(model)
    losses = []
    for idx in GLOBAL:
        loss, _ = task.loss(wrapped, task.collate(idx[rank::world]))
        loss.backward()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
    return {"losses": losses, "grads": _grads(wrapped), "ref_losses": ref_losses, "ref_grads": _grads(reference)}


def test_gathered_negatives_equal_one_process() -> None:
    results = run_distributed(_worker, 2, timeout=180)
    ref = results[0]
    for r in results:
        assert r["losses"] == results[0]["losses"]
        for a, b in zip(r["losses"], ref["ref_losses"], strict=True):
            assert abs(a - b) < 1e-5, (r["losses"], ref["ref_losses"])
        assert r["grads"].keys() == ref["ref_grads"].keys()
        for name, g in r["grads"].items():
            torch.testing.assert_close(g, ref["ref_grads"][name], rtol=1e-4, atol=1e-6, msg=name)
    assert ref["ref_grads"]["log_temperature"].abs() > 0
