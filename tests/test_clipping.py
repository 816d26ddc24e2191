"""Clipping folded into fused optimizer steps gives the steps of `torch.nn.utils.clip_grad_norm_`."""

from __future__ import annotations

import copy

import pytest
import torch

from kelm.train.clipping import after_step, clip_gradients, takes_grad_scale


@pytest.mark.parametrize(
    ("make", "fused"),
    [
        (lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01, fused=True), True),
        (lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True), True),
        (lambda ps: torch.optim.Adagrad(ps, lr=1e-1, fused=True), True),
        (lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True), False),
        (lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9), False),
    ],
)
def test_clipped_steps_match_torch(make, fused: bool) -> None:
    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    ref = copy.deepcopy(ours)
    opt, ref_opt = make(list(ours.parameters())), make(list(ref.parameters()))
    assert takes_grad_scale(opt) is fused
    clipped = 0
    for step in range(6):
        x, scale = torch.randn(8, 12), (10.0 if step % 2 else 1e-3)  # some steps clip, some do not
        for model in (ours, ref):
            (model(x).sum() * scale).backward()
        norm = torch.nn.utils.get_total_norm([p.grad for p in ours.parameters()])
        clipped += bool(norm > 1.0)
        clip_gradients(opt, ours.parameters(), norm, 1.0)
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
        after_step(opt)
        ref_opt.step()
        assert getattr(opt, "grad_scale", None) is None
        opt.zero_grad()
        ref_opt.zero_grad()
    assert 0 < clipped < 6
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
