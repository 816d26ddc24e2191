"""Knowledge-guided routing: KG domains of linked entities aligned to sub-word and byte tokens,
the router's domain embedding, and the specialisation metric."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kelm.app import run_training
from kelm.linking.domains import NONE, DomainLexicon, byte_domains, load_lexicon
from kelm.lm.hf import load_tokenizer
from kelm.moe import MoEConfig, MoELayer
from kelm.moe.domains import routing_table, specialisation
from kelm.train.logging import read_metrics

torch.set_num_threads(1)
UMLS_TEXT = Path(__file__).resolve().parents[1] / "src/kelm/data/bundled/umls/entity2textlong.txt"


@pytest.fixture(scope="module")
def lexicon() -> DomainLexicon:
    return load_lexicon("umls")


def _domain(lexicon: DomainLexicon, name: str) -> int:
    return lexicon.names.index(name)


def test_umls_lexicon_uses_semantic_groups(lexicon: DomainLexicon) -> None:
    assert lexicon.names[0] == "organism" and len(lexicon.names) == 7
    assert lexicon.entity_domain["amphibian"] == _domain(lexicon, "organism")
    assert lexicon.entity_domain["vitamin"] == _domain(lexicon, "substance")
    assert "entity" not in lexicon.entity_domain  # above every group


def test_domain_ids_follow_sub_word_tokens(lexicon: DomainLexicon) -> None:
    tok = load_tokenizer("minilm")
    text = "The amphibian ate a vitamin."
    enc = tok(text, return_offsets_mapping=True)
    pieces = tok.convert_ids_to_tokens(enc["input_ids"])
    got = dict(zip(pieces, lexicon.token_domains(text, enc["offset_mapping"]), strict=True))
    organism, substance = _domain(lexicon, "organism"), _domain(lexicon, "substance")
    assert pieces[2:5] == ["amp", "##hi", "##bian"]
    assert [got[p] for p in ("amp", "##hi", "##bian")] == [organism] * 3
    assert got["vitamin"] == substance
    assert got["[CLS]"] == got["[SEP]"] == got["the"] == got["ate"] == got["."] == NONE


def test_byte_domains_align_after_multibyte_characters(lexicon: DomainLexicon) -> None:
    data = "café: a fungus\nx\tvitamin".encode()
    doms = byte_domains(lexicon, data)
    start = data.index(b"fungus")
    assert doms[start : start + 6].tolist() == [_domain(lexicon, "organism")] * 6
    assert (doms[:start] == NONE).all() and doms[start + 6] == NONE
    v = data.index(b"vitamin")
    assert doms[v : v + 7].tolist() == [_domain(lexicon, "substance")] * 7
    # with documents, a description line takes its entity's domain (x has none, so unchanged)
    docs = byte_domains(lexicon, b"fungus\tgrows on bread", documents=True)
    assert docs.tolist() == [_domain(lexicon, "organism")] * len(b"fungus\tgrows on bread")


def test_domain_embedding_changes_routing_and_learns() -> None:
    torch.manual_seed(0)
    layer = MoELayer(MoEConfig(d_model=8, d_ff=16, n_experts=4, top_k=1, n_domains=3, z_loss_coef=0.0)).train()
    x = 0.1 * torch.randn(32, 8)
    domains = torch.tensor([0, 1, 2, NONE] * 8)
    with torch.no_grad():  # expert e reads input feature e; domain 0 adds a large feature 2
        layer.router.weight.copy_(torch.eye(4, 8))
        layer.router.domain_embedding.weight.zero_()
        layer.router.domain_embedding.weight[0, 2] = 3.0
    plain = layer.router(x).experts
    routed = layer.router(x, domains).experts
    assert (routed[domains == 0] == 2).all()
    assert not torch.equal(plain, routed)
    assert torch.equal(plain[domains != 0], routed[domains != 0])
    out = layer(x, domains)
    (out.pow(2).sum() + layer.aux_loss).backward()
    grad = layer.router.domain_embedding.weight.grad
    assert grad is not None and all(grad[d].abs().sum() > 0 for d in range(3))
    assert "domain_expert_nmi" in layer.stats()


def test_domain_embedding_leaves_the_rest_of_the_init_unchanged() -> None:
    from kelm.lm.gpt import GPT, GPTConfig

    moe = {"n_experts": 4, "top_k": 2, "d_ff": 32}
    models = []
    for n_domains in (0, 5):
        torch.manual_seed(3)
        models.append(GPT(GPTConfig(seq_len=8, d_model=16, n_layer=2, n_head=2, moe={**moe, "n_domains": n_domains})))
    plain, routed = (dict(m.named_parameters()) for m in models)
    assert set(routed) - set(plain) == {f"blocks.{i}.mlp.router.domain_embedding.weight" for i in range(2)}
    assert all(torch.equal(plain[k], routed[k]) for k in plain)
    emb = routed["blocks.0.mlp.router.domain_embedding.weight"]
    assert 0.5 < float(emb.std()) < 1.5  # domain_init_std 1, not the GPT's 0.02


def test_specialisation_on_hand_made_tables() -> None:
    one_each = specialisation(torch.tensor([[10, 0], [0, 5]]))
    assert one_each == {"nmi": pytest.approx(1.0), "top_expert_share": pytest.approx(1.0)}
    uniform = specialisation(torch.tensor([[5, 5], [5, 5]]))
    assert uniform == {"nmi": pytest.approx(0.0, abs=1e-12), "top_expert_share": pytest.approx(0.5)}
    p = torch.tensor([[6.0, 2.0], [1.0, 3.0]]) / 12
    pd, pe = p.sum(1), p.sum(0)
    mi = sum(float(p[i, j] * math.log(p[i, j] / (pd[i] * pe[j]))) for i in range(2) for j in range(2))
    hd = -sum(float(q * math.log(q)) for q in pd)
    got = specialisation(torch.tensor([[6, 2], [1, 3]]))
    assert got["nmi"] == pytest.approx(mi / hd) and got["top_expert_share"] == pytest.approx((6 / 8 + 3 / 4) / 2)


def test_routing_table_counts_slots_by_domain() -> None:
    experts = torch.tensor([[0, 1], [1, 2], [2, 0]])
    table = routing_table(experts, torch.tensor([1, NONE, 0]), n_domains=2, n_experts=3)
    assert table.tolist() == [[1, 0, 1], [1, 1, 0]]


def test_causal_lm_trains_with_domain_routing(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(UMLS_TEXT.read_bytes()[:3000])
    task = {
        "name": "causal-lm",
        "text": [str(corpus)],
        "seq_len": 32,
        "d_model": 32,
        "n_layer": 1,
        "n_head": 2,
        "moe_experts": 4,
        "moe_d_ff": 32,
        "moe_domain_routing": "umls",
        "moe_domain_documents": True,
    }
    train = {"threads": 1, "batch_size": 8, "max_steps": 4, "log_every": 1, "tensorboard": False}
    summary = run_training({"task": task, "train": train}, tmp_path / "run")
    assert 0.0 <= summary["valid"]["moe_domain_expert_nmi"] <= 1.0
    assert [r.step for r in read_metrics(tmp_path / "run") if r.split == "train" and r.name == "loss"] == [1, 2, 3, 4]
