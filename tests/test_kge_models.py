"""KGE scorers: 1-N scoring agrees with per-triple scoring, gradients, config errors, model formulas."""

from __future__ import annotations

import pytest
import torch

from kelm.errors import ConfigError
from kelm.kge.losses import all_entity_loss, one_to_n_loss
from kelm.kge.models import KGE_MODELS, ComplEx, KGEModel, RotatE, build_kge_model

E, R, D = 13, 4, 8
VARIANTS = [
    ("transe", {}),
    ("transe", {"p": 2.0}),
    ("distmult", {}),
    ("complex", {}),
    ("rotate", {}),
    ("rotate", {"p": 2.0}),
    ("rescal", {}),
]
IDS = [f"{name}-{kw.get('p', 'default')}" for name, kw in VARIANTS]


@pytest.fixture(params=VARIANTS, ids=IDS)
def model(request) -> KGEModel:
    torch.manual_seed(0)
    name, kwargs = request.param
    return build_kge_model(name, E, R, D, **kwargs).eval()


def all_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Every (query entity, relation) pair: entities ``(E*R,)``, relations ``(E*R,)``."""
    ent, rel = torch.meshgrid(torch.arange(E), torch.arange(R), indexing="ij")
    return ent.reshape(-1), rel.reshape(-1)


def test_registry_lists_all_models():
    assert sorted(KGE_MODELS) == ["complex", "distmult", "rescal", "rotate", "transe"]


def test_score_t_matches_score_hrt(model):
    h_B, r_B = all_pairs()
    scores_BE = model.score_t(h_B, r_B)
    assert scores_BE.shape == (E * R, E)
    for t in range(E):
        expected_B = model.score_hrt(h_B, r_B, torch.full_like(h_B, t))
        torch.testing.assert_close(scores_BE[:, t], expected_B, atol=1e-5, rtol=0)


def test_score_h_matches_score_hrt(model):
    t_B, r_B = all_pairs()
    scores_BE = model.score_h(r_B, t_B)
    assert scores_BE.shape == (E * R, E)
    for h in range(E):
        expected_B = model.score_hrt(torch.full_like(t_B, h), r_B, t_B)
        torch.testing.assert_close(scores_BE[:, h], expected_B, atol=1e-5, rtol=0)


@pytest.fixture(params=["gathered", "dense"])
def candidate_path(request, monkeypatch) -> str:
    """Per-row candidates scored from gathered embeddings, or from one matmul over all entities."""
    import kelm.kge.models as kge

    monkeypatch.setattr(kge, "DENSE_CANDIDATE_FACTOR", 0 if request.param == "gathered" else 10**6)
    return request.param


def test_candidates_equal_full_columns(model, candidate_path):
    h_B, r_B = all_pairs()
    cands_C = torch.tensor([5, 0, 12, 5])
    full_t, full_h = model.score_t(h_B, r_B), model.score_h(r_B, h_B)
    torch.testing.assert_close(model.score_t(h_B, r_B, cands_C), full_t[:, cands_C], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.score_h(r_B, h_B, cands_C), full_h[:, cands_C], atol=1e-5, rtol=0)
    per_query_BC = torch.randint(0, E, (len(h_B), 3), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.score_t(h_B, r_B, per_query_BC), full_t.gather(1, per_query_BC), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.score_h(r_B, h_B, per_query_BC), full_h.gather(1, per_query_BC), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["n3", "l2"])
def test_gradients_flow(model, kind):
    model.train()
    h, r, t = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3]), torch.tensor([4, 5, 6])
    loss = model.score_t(h, r).logsumexp(1).sum() + model.score_h(r, t).logsumexp(1).sum()
    loss = loss - model.score_hrt(h, r, t).sum() + 0.1 * model.regularizer(h, r, t, kind)
    loss.backward()
    for param in (model.entity.weight, model.relation.weight):
        assert param.grad is not None and torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0


def test_regularizer_formulas():
    torch.manual_seed(0)
    m = build_kge_model("distmult", E, R, D)
    h, r, t = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])
    embs = [m.entity.weight[h], m.relation.weight[r], m.entity.weight[t]]
    n3 = sum(x.abs().pow(3).sum() for x in embs) / 2
    l2 = sum(x.pow(2).sum() for x in embs) / 2
    torch.testing.assert_close(m.regularizer(h, r, t, "n3"), n3)
    torch.testing.assert_close(m.regularizer(h, r, t, "l2"), l2)
    c = build_kge_model("complex", E, R, D)
    moduli = [torch.complex(*w.chunk(2, -1)).abs() for w in (c.entity.weight[h], c.relation.weight[r])]
    moduli.append(torch.complex(*c.entity.weight[t].chunk(2, -1)).abs())
    torch.testing.assert_close(c.regularizer(h, r, t, "n3"), sum(x.pow(3).sum() for x in moduli) / 2)
    with pytest.raises(ConfigError, match="unknown regularizer"):
        m.regularizer(h, r, t, "l7")


def test_complex_matches_textbook_formula():
    torch.manual_seed(0)
    m = ComplEx(E, R, D)
    h, r, t = torch.randint(0, E, (20,)), torch.randint(0, R, (20,)), torch.randint(0, E, (20,))

    def as_complex(w):
        return torch.complex(*w.double().chunk(2, dim=-1))

    hc, rc, tc = as_complex(m.entity.weight[h]), as_complex(m.relation.weight[r]), as_complex(m.entity.weight[t])
    expected = (hc * rc * tc.conj()).sum(-1).real
    torch.testing.assert_close(m.score_hrt(h, r, t).double(), expected, atol=1e-6, rtol=0)


def test_rotate_rotation_has_unit_modulus_and_matches_formula():
    torch.manual_seed(0)
    m = RotatE(E, R, D)
    rot = m.rotation(torch.arange(R))
    assert rot.shape == (R, D // 2) and rot.is_complex()
    torch.testing.assert_close(rot.abs(), torch.ones(R, D // 2))
    h, r, t = torch.tensor([0, 3]), torch.tensor([1, 2]), torch.tensor([5, 7])
    hc, tc = (torch.complex(*m.entity.weight[x].chunk(2, dim=-1)) for x in (h, t))
    expected = -(hc * m.rotation(r) - tc).abs().sum(-1)
    torch.testing.assert_close(m.score_hrt(h, r, t), expected)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    m = build_kge_model("distmult", E, R, D, dropout=0.5)
    h, r = torch.arange(4), torch.arange(4)
    m.eval()
    torch.testing.assert_close(m.score_t(h, r), m.score_t(h, r))
    m.train()
    assert not torch.equal(m.score_t(h, r), m.score_t(h, r))


@pytest.mark.parametrize("name", ["complex", "rotate"])
def test_odd_dim_is_a_config_error(name):
    with pytest.raises(ConfigError, match=f"model.dim must be even for {name}, got 7"):
        build_kge_model(name, E, R, 7)


def test_unknown_model_and_option_are_config_errors():
    with pytest.raises(
        ConfigError, match=r"unknown KGE model 'tucker' \(known: complex, distmult, rescal, rotate, transe\)"
    ):
        build_kge_model("tucker", E, R, D)
    with pytest.raises(ConfigError, match="p are not valid for distmult"):
        build_kge_model("distmult", E, R, D, p=2)
    with pytest.raises(ConfigError, match="model.dim must be positive"):
        build_kge_model("distmult", E, R, 0)


@pytest.mark.parametrize("kind", ["ce", "bce"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("chunk", [4, None])
def test_all_entity_loss_equals_loss_of_the_score_matrix(kind: str, eps: float, chunk: int | None) -> None:
    """The chunked loss never builds q @ table.T, yet its value and both gradients are that matrix's."""
    torch.manual_seed(0)
    B, E, D = 19, 300, 12
    q = torch.randn(B, D, requires_grad=True)
    table = torch.randn(E, D, requires_grad=True)
    pairs = torch.unique(torch.stack([torch.arange(60) % B, torch.randint(0, E, (60,))], 1), dim=0)
    rows, cols = pairs[:, 0], pairs[:, 1]
    shuffled = torch.randperm(len(rows))  # answers in any order
    want = one_to_n_loss(q @ table.T, rows, cols, kind, eps)
    want_grads = torch.autograd.grad(2.5 * want, [q, table])
    got = all_entity_loss(q, table, rows[shuffled], cols[shuffled], kind, eps, chunk=chunk)
    got_grads = torch.autograd.grad(2.5 * got, [q, table])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["complex", "transe"])
def test_loss_all_mixes_head_and_tail_queries(name: str) -> None:
    """Linear (chunked) and distance (score matrix) models agree with scoring each side apart."""
    torch.manual_seed(0)
    model = build_kge_model(name, 50, 4, 8)
    e, r = torch.randint(0, 50, (10,)), torch.randint(0, 4, (10,))
    is_tail = torch.arange(10) % 3 > 0
    rows, cols = torch.arange(10), torch.randint(0, 50, (10,))
    got = model.loss_all(e, r, is_tail, rows, cols, "ce", 0.0)
    scores = torch.where(is_tail[:, None], model.score_t(e, r), model.score_h(r, e))
    torch.testing.assert_close(got, torch.nn.functional.cross_entropy(scores, cols), rtol=1e-5, atol=1e-6)
