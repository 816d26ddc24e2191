"""The chunked RotatE distance equals the broadcast formula, values and gradients."""

from __future__ import annotations

import pytest
import torch

from kelm.kge.models import build_kge_model
from kelm.kge.modulus_distance import gathered_modulus_distances, modulus_distances


def broadcast(q: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    K = q.shape[-1] // 2
    d = q[:, None] - cand if cand.dim() == 3 else q[:, None] - cand[None]
    return torch.sqrt(d[..., :K] ** 2 + d[..., K:] ** 2).sum(-1)


@pytest.mark.parametrize("chunk", [1, 3, None])
def test_shared_and_gathered_gradients_pass_gradcheck(chunk: int | None) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    table = torch.randn(9, 6, dtype=torch.float64, generator=g, requires_grad=True)
    idx = torch.randint(9, (5, 4), generator=g)
    assert torch.autograd.gradcheck(lambda a, b: modulus_distances(a, b, chunk), (q, table))
    assert torch.autograd.gradcheck(lambda a, b: gathered_modulus_distances(a, b, idx, chunk), (q, table))
    assert torch.allclose(modulus_distances(q, table, chunk), broadcast(q, table))
    assert torch.allclose(gathered_modulus_distances(q, table, idx, chunk), broadcast(q, table[idx]))


def test_many_candidates_are_split_into_slices_with_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    import kelm.kge.modulus_distance as md

    q, cand = torch.randn(7, 8, dtype=torch.float64), torch.randn(50, 8, dtype=torch.float64)
    monkeypatch.setattr(md, "CHUNK_BYTES_PER_THREAD", 8 * 8 * 8)  # slices of about 8 candidates
    assert torch.allclose(md.modulus_distances(q, cand), broadcast(q, cand))


def test_rotate_candidate_scores_match_its_interaction_for_heads_and_tails() -> None:
    torch.manual_seed(0)
    model = build_kge_model("rotate", 30, 4, 16).double()
    h, r, t = torch.randint(30, (6,)), torch.randint(4, (6,)), torch.randint(30, (6,))
    each, shared = torch.randint(30, (6, 5)), torch.randint(30, (5,))
    E, R = model.entity.weight, model._rel
    ref_t = model.interact(E[h][:, None], R(r)[:, None], E[each])
    ref_h = model.interact(E[each], R(r)[:, None], E[t][:, None])
    assert torch.allclose(model.score_t(h, r, each), ref_t)
    assert torch.allclose(model.score_h(r, t, each), ref_h)
    assert torch.allclose(model.score_t(h, r, shared), model.interact(E[h][:, None], R(r)[:, None], E[shared][None]))
    assert torch.allclose(model.score_t(h, r), model.interact(E[h][:, None], R(r)[:, None], E[None]))


def test_rotate_init_range_bounds_the_entity_table() -> None:
    model = build_kge_model("rotate", 50, 3, 20, init_range=0.016)
    assert model.entity.weight.abs().max() <= 0.016
    assert model.entity.weight.abs().max() > 0.01
