"""The MoE layer on one process: router math, dispatch against the dense reference, capacity
dropping, bias balancing, knowledge-guided routing and bad settings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kelm.errors import ConfigError
from kelm.moe import MoEConfig, MoELayer, moe_aux_loss, moe_stats, normalized_mutual_information
from kelm.moe.router import optimizer_steps

torch.set_num_threads(1)


def _layer(**kw: object) -> MoELayer:
    torch.manual_seed(0)
    base: dict[str, object] = {"d_model": 16, "d_ff": 32, "n_experts": 4, "top_k": 2}
    return MoELayer(MoEConfig(**{**base, **kw}))  # type: ignore[arg-type]


def test_router_matches_reference_topk_softmax() -> None:
    layer = _layer(renormalize=False)
    x = torch.randn(50, 16)
    out = layer.router(x)
    logits = x.double() @ layer.router.weight.double().t()
    probs = logits.softmax(-1)
    ref_w, ref_e = probs.topk(2, dim=-1)
    assert out.logits.dtype == out.probs.dtype == out.weights.dtype == torch.float32
    torch.testing.assert_close(out.probs.double(), probs, atol=1e-6, rtol=0)
    assert torch.equal(out.experts, ref_e)
    torch.testing.assert_close(out.weights.double(), ref_w, atol=1e-6, rtol=0)
    renorm = _layer(renormalize=True).router(x)
    torch.testing.assert_close(renorm.weights.double(), ref_w / ref_w.sum(-1, keepdim=True), atol=1e-6, rtol=0)


def test_router_computes_in_fp32_for_low_precision_inputs() -> None:
    layer = _layer()
    x = torch.randn(20, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer.router(x.bfloat16())
    assert out.logits.dtype == torch.float32
    ref = x.bfloat16().float() @ layer.router.weight.t()
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)


def test_switch_and_z_loss_formulas() -> None:
    layer = _layer(aux_loss_coef=1.0, z_loss_coef=0.0).train()
    x = torch.randn(64, 16)
    layer.router.reset_statistics()
    layer(x)
    with torch.no_grad():
        out = layer.router(x)
    N, E, k = 64, 4, 2
    f = torch.bincount(out.experts.reshape(-1), minlength=E).double() / (N * k)
    P = out.probs.double().mean(0)
    switch = float(E * (f * P).sum())
    assert layer.aux_loss is not None
    assert math.isclose(float(layer.aux_loss.detach()), switch, rel_tol=1e-5)
    assert math.isclose(layer.stats()["aux_loss"], switch, rel_tol=1e-6)
    z = torch.logsumexp(out.logits.double(), -1).pow(2).mean()
    assert math.isclose(layer.stats()["z_loss"], float(z), rel_tol=1e-6)
    zl = _layer(aux_loss_coef=0.0, z_loss_coef=0.5).train()
    zl(x)
    assert math.isclose(float(zl.aux_loss.detach()), 0.5 * float(z), rel_tol=1e-5)  # type: ignore[arg-type]
    # the Switch loss is 1 at perfect balance and uniform probabilities
    assert math.isclose(E * sum(0.25 * 0.25 for _ in range(E)), 1.0)


@pytest.mark.parametrize("impl", ["loop", "padded", "grouped_mm"])
@pytest.mark.parametrize("capacity", [None, 0.5])
@pytest.mark.parametrize("expert_type", ["swiglu", "mlp"])
def test_dispatch_equals_dense_reference(impl: str, capacity: float | None, expert_type: str) -> None:
    layer = _layer(impl=impl, capacity_factor=capacity, expert_type=expert_type, bias=True, n_shared_experts=1)
    x = torch.randn(3, 11, 16, requires_grad=True)
    g = torch.randn(3, 11, 16)
    y = layer(x)
    y.backward(g)
    sparse = [p.grad.clone() for p in layer.parameters() if p.grad is not None] + [x.grad.clone()]
    layer.zero_grad()
    x.grad = None
    ref = layer.dense_forward(x)
    ref.backward(g)
    dense = [p.grad.clone() for p in layer.parameters() if p.grad is not None] + [x.grad.clone()]
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    assert len(sparse) == len(dense)
    for a, b in zip(sparse, dense, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if capacity is not None:
        assert layer.stats()["dropped_fraction"] > 0


@pytest.mark.parametrize("shared", [0, 1])
def test_dropped_tokens_get_zero_expert_output(shared: int) -> None:
    # capacity 1 slot per expert: with 12 tokens x 2 slots over 4 experts most slots are dropped
    layer = _layer(capacity_factor=1 / 6, n_shared_experts=shared).train()
    x = torch.randn(12, 16)
    y = layer(x)
    out = layer.router(x)
    N, E = 12, 4
    flat = out.experts.t().reshape(-1)
    kept = torch.zeros(2 * N, dtype=torch.bool)
    seen: set[int] = set()
    for s in range(2 * N):  # first choices first, then token order: each expert keeps its first slot
        e = int(flat[s])
        if e not in seen:
            kept[s] = True
            seen.add(e)
    kept_tokens = set((torch.nonzero(kept).flatten() % N).tolist())
    base = layer.shared(x) if layer.shared is not None else torch.zeros_like(x)
    for t in range(N):
        if t not in kept_tokens:
            torch.testing.assert_close(y[t], base[t])
    assert math.isclose(layer.stats()["dropped_fraction"], 1 - kept.sum().item() / (2 * N))
    assert int(kept.sum()) == len(seen) <= E


def test_bias_balancing_changes_selection_not_weights() -> None:
    layer = _layer(bias_balancing=True, renormalize=False, bias_update_rate=0.1)
    x = torch.randn(40, 16)
    before = layer.router(x)
    layer.router.expert_bias[3] = 10.0  # expert 3 wins every selection
    after = layer.router(x)
    assert torch.equal(after.probs, before.probs)
    assert bool((after.experts == 3).any(-1).all())
    assert not torch.equal(after.experts, before.experts)
    torch.testing.assert_close(after.weights, after.probs.gather(1, after.experts))
    # after an optimizer step, the overloaded expert's bias falls and the others rise
    layer.train()
    layer.router.reset_statistics()
    layer(x)
    bias = layer.router.expert_bias.clone()
    torch.optim.SGD(layer.parameters(), lr=0.0).step()
    layer(x)
    delta = layer.router.expert_bias - bias
    assert delta[3] < 0
    assert (delta[:3] > 0).all()
    assert optimizer_steps() > 0


def test_stats_and_aux_loss_helpers() -> None:
    model = torch.nn.Sequential(_layer(), torch.nn.ReLU(), _layer(n_domains=3))
    model.train()
    model[0].router.reset_statistics()
    model[2].router.reset_statistics()
    x = torch.randn(30, 16)
    y = model[1](model[0](x))
    model[2](y, domain_ids=torch.randint(-1, 3, (30,)))
    aux = moe_aux_loss(model)
    assert aux is not None and aux.requires_grad
    stats = moe_stats(model, per_expert=True)
    assert {"moe_load_max", "moe_dropped_fraction", "moe_router_entropy", "moe_aux_loss"} <= set(stats)
    assert math.isclose(sum(stats[f"moe0_load_e{e}"] for e in range(4)), 1.0, rel_tol=1e-9)
    assert 0 < stats["moe_router_entropy"] <= math.log(4) + 1e-6
    assert "domain_expert_nmi" in model[2].stats()
    model.eval()
    model[0](x)
    assert model[0].aux_loss is None


def test_normalized_mutual_information_bounds() -> None:
    assert normalized_mutual_information(torch.eye(4) * 10) == pytest.approx(1.0)
    assert normalized_mutual_information(torch.ones(4, 4)) == pytest.approx(0.0, abs=1e-12)


def test_knowledge_guided_routing_specialises() -> None:
    """Four domains, each with its own linear target map; the inputs do not reveal the domain,
    so only the domain embedding lets the router send each domain to a fitting expert."""
    torch.manual_seed(1)
    D, n_dom = 16, 4
    maps = torch.randn(n_dom, D, D) / math.sqrt(D)
    layer = MoELayer(
        MoEConfig(
            d_model=D,
            d_ff=32,
            n_experts=4,
            top_k=1,
            renormalize=False,
            n_domains=n_dom,
            aux_loss_coef=0.01,
            z_loss_coef=0.0,
            router_init_std=0.02,
        )
    ).train()
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    nmi = []
    for _ in range(150):
        x = torch.randn(256, D)
        dom = torch.randint(0, n_dom, (256,))
        target = torch.einsum("nd,nde->ne", x, maps[dom])
        loss = F.mse_loss(layer(x, domain_ids=dom), target) + layer.aux_loss
        nmi.append(layer.stats()["domain_expert_nmi"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    start, end = sum(nmi[:5]) / 5, sum(nmi[-5:]) / 5
    assert end > start + 0.3, (start, end)
    assert end > 0.5


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"top_k \(3\) must be between 1 and the number of experts \(2\)"):
        MoEConfig(d_model=8, n_experts=2, top_k=3)
    with pytest.raises(ConfigError, match="capacity_factor"):
        MoEConfig(d_model=8, capacity_factor=0)
    with pytest.raises(ConfigError, match="unknown expert_type"):
        MoEConfig(d_model=8, expert_type="moe")
    with pytest.raises(ConfigError, match="unknown setting"):
        MoEConfig.from_dict({"d_model": 8, "experts": 4})
    layer = _layer(n_experts=3, top_k=1)
    with pytest.raises(ConfigError, match="3 experts cannot be split evenly over an expert-parallel degree of 2"):
        layer.shard_experts(None, 2, 0)
