"""Vocabulary compaction: training only the rows the data uses is the full model's run, and
everything saved (checkpoints, exported model) is the full model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_lm_speedups import SIZES, synthetic

from kelm.app import run_training
from kelm.lm.compact_vocab import CompactEmbedding, compact_vocabulary
from kelm.lm.hf import build_hf_model, load_tokenizer
from kelm.tasks import build_task
from kelm.train.config import TrainConfig
from kelm.train.trainer import seed_everything

WORD = "bert.embeddings.word_embeddings.weight"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-bert")


def classifier(tok) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_hf_model("tiny-bert", "classification", tok, ["neg", "pos"], SIZES)


def test_compact_embedding_looks_like_the_full_one(tok) -> None:
    full = classifier(tok)
    ids = tok(["the night sky", "a river"], padding=True, return_tensors="pt")["input_ids"]
    model = copy.deepcopy(full)
    assert compact_vocabulary(model, set(ids.flatten().tolist()) | set(tok.all_special_ids))
    emb = model.get_input_embeddings()
    assert isinstance(emb, CompactEmbedding) and emb.weight.shape[0] < 20
    assert torch.equal(emb(ids), full.get_input_embeddings()(ids))
    # state_dict is the full model's, under the same key
    sd, ref = model.state_dict(), full.state_dict()
    assert sd.keys() == ref.keys() and torch.equal(sd[WORD], ref[WORD])
    # a full table loads back into the compact rows, keeping the same Parameter object
    param = emb.weight
    table = torch.randn_like(ref[WORD])
    model.load_state_dict(ref | {WORD: table})
    assert emb.weight is param and torch.equal(emb(ids), torch.nn.functional.embedding(ids, table))
    assert torch.equal(model.state_dict()[WORD], table)
    with pytest.raises(ValueError, match="not in the compacted vocabulary"):
        emb(torch.tensor([[tok.vocab_size - 1]]))
    with pytest.raises(RuntimeError, match="does not fit"):
        model.load_state_dict(ref | {WORD: table[:-1]})


def test_gradients_match_the_full_table(tok) -> None:
    full = classifier(tok).train()
    batch = tok(["the night sky", "a river runs on"], padding=True, return_tensors="pt")
    keep = set(batch["input_ids"].flatten().tolist()) | {5, 9}
    model = copy.deepcopy(full)
    compact_vocabulary(model, keep)
    for m in (full, model):
        torch.manual_seed(1)
        m(**batch).logits.logsumexp(-1).sum().backward()
    rows = model.get_input_embeddings().rows
    want = full.get_input_embeddings().weight.grad
    assert torch.allclose(model.get_input_embeddings().weight.grad, want[rows], atol=1e-6)
    others = torch.ones(want.shape[0], dtype=torch.bool)
    others[rows] = False
    assert not want[others].any()  # rows left out get no gradient in the full model either


def test_tied_embeddings_are_not_compacted(tok) -> None:
    mlm = build_hf_model("tiny-bert", "mlm", tok, None, SIZES)
    assert not compact_vocabulary(mlm, {1, 2, 3})


def test_compaction_only_where_exact(tmp_path: Path) -> None:
    table = {"name": "classification", "model": "tiny-bert", "train": str(synthetic(tmp_path / "t.tsv", 16, 0))}
    task = build_task(table | SIZES)
    for train, compact in (
        (TrainConfig(), True),
        (TrainConfig(weight_decay=0.01), False),  # rows without gradient would decay
        (TrainConfig(strategy="fsdp2"), False),
    ):
        task.configure(train)
        assert isinstance(task.build_model().get_input_embeddings(), CompactEmbedding) is compact
    task = build_task(table | SIZES | {"compact_vocab": False})
    task.configure(TrainConfig())
    assert not isinstance(task.build_model().get_input_embeddings(), CompactEmbedding)


def _table(tmp_path: Path) -> dict:
    return {
        "name": "classification",
        "model": "tiny-bert",
        "train": str(synthetic(tmp_path / "train.tsv", 96, 0)),
        "dev": str(synthetic(tmp_path / "dev.tsv", 32, 1)),
        "test": str(synthetic(tmp_path / "test.tsv", 32, 2)),
    } | SIZES


TRAIN = {"strategy": "single", "max_steps": 6, "batch_size": 16, "lr": 2e-3, "threads": 1, "tensorboard": False}


def test_training_with_compaction_is_the_full_models_run(tmp_path: Path) -> None:
    table = _table(tmp_path)
    fast = run_training({"task": table, "train": TRAIN}, tmp_path / "fast")
    full = run_training({"task": table | {"compact_vocab": False}, "train": TRAIN}, tmp_path / "full")
    assert fast["valid"]["loss"] == pytest.approx(full["valid"]["loss"], abs=1e-5)
    assert fast["test"]["accuracy"] == full["test"]["accuracy"]
    got, want = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("fast", "full"))
    assert got.keys() == want.keys() and got[WORD].shape == want[WORD].shape
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-5, rtol=0), name
    # the rows the data uses were trained; the others are as initialised
    task = build_task(table)
    seed_everything(TrainConfig().seed)
    initial = task.build_model().state_dict()[WORD]
    used = torch.zeros(initial.shape[0], dtype=torch.bool)
    used[sorted(task.token_ids())] = True
    moved = (got[WORD] != initial).any(-1)
    assert moved[used].float().mean() > 0.5 and not moved[~used].any()


def test_resume_with_compaction_is_exact(tmp_path: Path) -> None:
    table = _table(tmp_path)
    train = TRAIN | {"schedule": "constant", "checkpoint_every": 3}
    run_training({"task": table, "train": train}, tmp_path / "straight")
    part = tmp_path / "part"
    run_training({"task": table, "train": train}, part, overrides={"train.max_steps": 3})
    run_training(None, part, resume=part, overrides={"train.max_steps": 6})
    got, want = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("part", "straight"))
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-6, rtol=0), name
