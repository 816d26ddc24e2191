"""Exact fine-tuning speed-ups: same logits, same gradients, same training run as without them."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch

from kelm.app import run_training
from kelm.lm.hf import build_hf_model, load_tokenizer
from kelm.lm.speedups import (
    SHORT_ROW,
    first_token_last_layer,
    head_at,
    row_sparse_embedding_grads,
    short_row_attention,
    softmax_last,
)

SIZES = {"hidden_size": 64, "num_layers": 2, "num_heads": 4}
TEXTS = ["a short verse", "a much longer verse that runs on over the hills and far away", "the night"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-bert")


def classifier(tok, attn: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_hf_model("tiny-bert", "classification", tok, ["neg", "pos", "neu"], SIZES)
    model.set_attn_implementation(attn)
    return model.eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_first_token_last_layer_gives_the_full_models_logits(tok, attn: str) -> None:
    full = classifier(tok, attn)
    fast = copy.deepcopy(full)
    assert first_token_last_layer(fast)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        want, got = full(**batch).logits, fast(**batch).logits
        hidden = fast.base_model(**batch).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert hidden.shape[1] == 1  # the last layer ran at one position
    loss_full = full(**batch).logits.logsumexp(-1).sum()
    loss_fast = fast(**batch).logits.logsumexp(-1).sum()
    loss_full.backward()
    loss_fast.backward()
    for (name, p), q in zip(full.named_parameters(), fast.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name


def test_first_token_last_layer_draws_the_full_layers_dropout(tok) -> None:
    full = classifier(tok).train()
    fast = copy.deepcopy(full)
    assert first_token_last_layer(fast)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    outs = []
    for model in (full, fast):
        torch.manual_seed(5)
        outs.append((model(**batch).logits, torch.rand(4)))  # and the generator is left where the full model leaves it
    assert torch.allclose(outs[1][0], outs[0][0], atol=1e-5, rtol=0)
    assert torch.equal(outs[1][1], outs[0][1])
    torch.manual_seed(6)
    other = full(**batch).logits
    assert not torch.allclose(other, outs[0][0], atol=1e-3)  # dropout is on: another seed, other logits


def test_first_token_last_layer_leaves_other_models_alone(tok) -> None:
    gpt = build_hf_model("tiny-gpt2", "classification", tok, ["a", "b"], SIZES)
    before = gpt.transformer.h[-1].forward
    assert not first_token_last_layer(gpt)
    assert gpt.transformer.h[-1].forward == before


def test_row_sparse_embedding_grads_match_dense_and_reuse_one_buffer(tok) -> None:
    dense = classifier(tok)
    fast = copy.deepcopy(dense)
    assert row_sparse_embedding_grads(fast) == 3  # word, position and token-type embeddings
    opt_d = torch.optim.SGD(dense.parameters(), lr=0.1)  # linear in the gradient: Adam would magnify
    opt_f = torch.optim.SGD(fast.parameters(), lr=0.1)  # rounding noise of gradients that are ~0
    buffers = []
    for texts in (TEXTS, ["entirely different words", "zebra quantum"]):  # rows of step 1 must not linger
        batch = tok(texts, padding=True, return_tensors="pt")
        for model in (dense, fast):
            model(**batch).logits.pow(2).sum().backward()
        w = fast.base_model.embeddings.word_embeddings.weight
        assert not w.grad.is_sparse
        buffers.append(w.grad.data_ptr())
        for (name, p), q in zip(dense.named_parameters(), fast.parameters(), strict=True):
            assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-5), name
        for opt in (opt_d, opt_f):
            opt.step()
            opt.zero_grad(set_to_none=True)
    assert buffers[0] == buffers[1]
    for p, q in zip(dense.parameters(), fast.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


def test_tied_embeddings_keep_dense_grads(tok) -> None:
    mlm = build_hf_model("tiny-bert", "mlm", tok, None, SIZES)
    assert row_sparse_embedding_grads(mlm) == 2  # the word embedding is tied to the output layer


def synthetic(path: Path, n: int, seed: int) -> Path:
    """``id<TAB>text<TAB>label`` rows: the label says which word family the verse holds."""
    rng = random.Random(seed)
    words = {"pos": ["glad", "bright", "joy"], "neg": ["dark", "grief", "cold"]}
    filler = ["the", "river", "hill", "sky", "night", "over", "stone", "and"]
    rows = []
    for i in range(n):
        label = rng.choice(["pos", "neg"])
        verse = rng.choices(filler, k=rng.randint(2, 10)) + [rng.choice(words[label])]
        rows.append(f"{i}\t{' '.join(verse)}\t{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_training_with_and_without_speedups_is_the_same_run(tmp_path: Path) -> None:
    table = {
        "name": "classification",
        "model": "tiny-bert",
        "train": str(synthetic(tmp_path / "train.tsv", 96, 0)),
        "dev": str(synthetic(tmp_path / "dev.tsv", 32, 1)),
    } | SIZES
    train = {"strategy": "single", "max_steps": 6, "batch_size": 16, "lr": 2e-3, "threads": 1, "tensorboard": False}
    plain = {
        "sparse_embedding_grads": False,
        "first_token_last_layer": False,
        "compact_vocab": False,
        "short_row_attention": False,
    }
    fast = run_training({"task": table, "train": train}, tmp_path / "fast")
    slow = run_training({"task": table | plain, "train": train}, tmp_path / "plain")
    assert fast["valid"]["loss"] == pytest.approx(slow["valid"]["loss"], abs=1e-5)
    assert fast["final_train_loss"] == pytest.approx(slow["final_train_loss"], abs=1e-5)


def test_head_at_masked_positions_gives_the_full_heads_logits(tok) -> None:
    torch.manual_seed(0)
    mlm = build_hf_model("tiny-bert", "mlm", tok, None, SIZES).eval()
    ids = tok(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    keep = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    with torch.no_grad():
        want = mlm(input_ids=ids).logits[keep]
        with head_at(mlm, keep) as selected:
            got = mlm(input_ids=ids).logits
        after = mlm(input_ids=ids).logits
    assert selected and got.shape == (int(keep.sum()), len(tok))
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert after.shape[:2] == ids.shape  # the hook is gone after the block


@pytest.mark.parametrize("words", [3, 30])  # under and over the 16-token row the fast path pads to
def test_short_row_attention_is_sdpa_attention(tok, words: int) -> None:
    full = classifier(tok)
    fast = copy.deepcopy(full)
    assert short_row_attention(fast)
    texts = [" ".join(["verse"] * words), "a night", " ".join(["hill"] * (words // 2))]
    batch = tok(texts, padding=True, return_tensors="pt")
    assert (batch["input_ids"].shape[1] < SHORT_ROW) is (words == 3)
    for mode in ("eval", "train"):  # in training, dropout draws the same masks
        outs = []
        for model in (full, fast):
            getattr(model, mode)()
            torch.manual_seed(7)
            logits = model(**batch).logits
            logits.logsumexp(-1).sum().backward()
            outs.append((logits, [p.grad.clone() for p in model.parameters()]))
            model.zero_grad()
        assert torch.allclose(outs[0][0], outs[1][0], atol=1e-6, rtol=0)
        for g_full, g_fast in zip(outs[0][1], outs[1][1], strict=True):
            assert torch.allclose(g_full, g_fast, atol=1e-6, rtol=1e-5)


def test_softmax_last_pads_short_rows_exactly() -> None:
    x = torch.randn(3, 4, 5, 11)
    x[..., -2:] = float("-inf")  # masked keys
    assert torch.allclose(softmax_last(x), x.softmax(-1), atol=1e-7, rtol=0)
