"""MoE at world size 2 (gloo, CPU): global-batch balancing statistics, expert parallelism
(all_to_all dispatch and combine) and expert parallelism composed with DDP, each checked against
one process holding the whole layer. One spawned run feeds every test here."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from distributed_harness import run_distributed
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kelm.moe import MoEConfig, MoELayer, enable_expert_parallel

torch.set_num_threads(1)
WORLD = 2
D, E, N = 16, 4, 24


def _layer(**kw: Any) -> MoELayer:
    torch.manual_seed(0)
    cfg: dict[str, Any] = {"d_model": D, "d_ff": 32, "n_experts": E, "top_k": 2, "z_loss_coef": 0.0}
    return MoELayer(MoEConfig(**{**cfg, **kw}))


def _data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)


def _aux_run(rank: int, world: int, accum: int) -> dict[str, Any]:
    """One step on a global batch of N tokens: ``accum`` micro-batches, rank r takes rows r::world
    of each; gradients scaled by 1/accum and averaged over ranks, as the engine does."""
    layer = _layer(aux_loss_coef=1.0).train()
    layer.router.reset_statistics()
    x, _ = _data()
    micro = N // accum
    for m in range(accum):
        xm = x[m * micro : (m + 1) * micro][rank::world]
        layer(xm)
        assert layer.aux_loss is not None
        (layer.aux_loss / accum).backward()
    grad = layer.router.weight.grad.clone()
    if world > 1:
        dist.all_reduce(grad)
        grad /= world
    return {"aux": layer.stats()["aux_loss"], "load": layer.stats()["load_e0"], "grad": grad}


def _ep_run(rank: int, world: int, expert_type: str) -> dict[str, Any]:
    """Expert-parallel forward and backward of rank r's share of the tokens (raw sums, no averaging)."""
    layer = _layer(expert_type=expert_type, bias=expert_type == "mlp")
    enable_expert_parallel(nn.ModuleList([layer]), average_grads=False)
    x, g = _data()
    rows = slice(rank * N // world, (rank + 1) * N // world)
    xr = x[rows].clone().requires_grad_()
    out = layer(xr)
    (out * g[rows]).sum().backward()
    return {
        "out": out.detach(),
        "x_grad": xr.grad,
        "router_grad": layer.router.weight.grad,
        "expert_grads": {n: p.grad.clone() for n, p in layer.experts.named_parameters()},
    }


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(D, D)
        self.moe = _layer(aux_loss_coef=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe(self.inp(x))


def _net_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model(x)
    aux = (model.module if isinstance(model, DistributedDataParallel) else model).moe.aux_loss
    return F.mse_loss(out, y) + aux


def _ddp_run(rank: int, world: int) -> dict[str, Any]:
    """Expert parallelism under DDP: non-expert gradients all-reduced by DDP, expert gradients
    averaged by the EP hooks; one step of the mean loss over all ranks' tokens."""
    net = _Net().train()
    net.moe.router.reset_statistics()
    ignored = enable_expert_parallel(net)
    model = DistributedDataParallel(net)
    x, y = _data()
    loss = _net_loss(model, x[rank::world], y[rank::world])
    loss.backward()
    return {
        "ignored": ignored,
        "ddp_params": [n for n, p in model.named_parameters() if n.removeprefix("module.") not in ignored],
        "grads": {n: p.grad.clone() for n, p in net.named_parameters()},
    }


def _worker(rank: int, world: int) -> dict[str, Any]:
    return {
        "aux1": _aux_run(rank, world, 1),
        "aux2": _aux_run(rank, world, 2),
        "ep_swiglu": _ep_run(rank, world, "swiglu"),
        "ep_mlp": _ep_run(rank, world, "mlp"),
        "ddp": _ddp_run(rank, world),
    }


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    return run_distributed(_worker, WORLD)


def test_global_aux_loss_equal_across_accumulation_and_world_size(results: list[dict[str, Any]]) -> None:
    ref = _aux_run(0, 1, 1)
    one_proc_accum = _aux_run(0, 1, 2)
    for r in results:
        for key in ("aux1", "aux2"):
            assert r[key]["aux"] == pytest.approx(ref["aux"], rel=1e-7)
            assert r[key]["load"] == pytest.approx(ref["load"], rel=1e-12)
    assert one_proc_accum["aux"] == pytest.approx(ref["aux"], rel=1e-7)
    # one micro-batch per step: the gradient is exactly the global-batch loss's at any world size
    torch.testing.assert_close(results[0]["aux1"]["grad"], ref["grad"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(results[1]["aux1"]["grad"], ref["grad"], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("expert_type", ["swiglu", "mlp"])
def test_expert_parallel_equals_single_process(results: list[dict[str, Any]], expert_type: str) -> None:
    layer = _layer(expert_type=expert_type, bias=expert_type == "mlp")
    x, g = _data()
    x = x.clone().requires_grad_()
    out = layer(x)
    (out * g).sum().backward()
    parts = [r[f"ep_{expert_type}"] for r in results]
    torch.testing.assert_close(torch.cat([p["out"] for p in parts]), out.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([p["x_grad"] for p in parts]), x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sum(p["router_grad"] for p in parts), layer.router.weight.grad, atol=1e-5, rtol=1e-5)
    n_local = E // WORLD
    for rank, p in enumerate(parts):
        for name, full in layer.experts.named_parameters():
            expected = full.grad[rank * n_local : (rank + 1) * n_local]
            torch.testing.assert_close(p["expert_grads"][name], expected, atol=1e-5, rtol=1e-5)


def test_expert_parallel_composes_with_ddp(results: list[dict[str, Any]]) -> None:
    net = _Net().train()
    net.moe.router.reset_statistics()
    x, y = _data()
    _net_loss(net, x, y).backward()
    n_local = E // WORLD
    for rank, r in enumerate(results):
        ddp = r["ddp"]
        assert sorted(ddp["ignored"]) == ["moe.experts.w_down", "moe.experts.w_gate_up"]
        assert not any("experts" in n for n in ddp["ddp_params"])
        for name, p in net.named_parameters():
            expected = p.grad
            if ".experts." in name:
                expected = expected[rank * n_local : (rank + 1) * n_local]
            torch.testing.assert_close(ddp["grads"][name], expected, atol=1e-5, rtol=1e-5, msg=name)
