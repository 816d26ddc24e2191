"""Pretraining: cached tokenization, packing, MLM masking, MLM and CLM training with perplexity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kelm.cli import main
from kelm.data import bundled_path
from kelm.errors import DataError
from kelm.lm import corpus as C
from kelm.lm.hf import load_tokenizer
from kelm.tasks import build_task
from kelm.tasks.pretrain import IGNORE, PretrainTask, mask_tokens
from kelm.train.data import ShardedBatches

TINY = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "block_size": 64}
TRAIN = ["--batch-size", "8", "--lr", "0.003", "--strategy", "single"]


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 40 KB of English (UMLS entity descriptions), one paragraph per entity."""
    lines = (bundled_path("umls") / "entity2textlong.txt").read_text().splitlines()[:80]
    path = tmp_path_factory.mktemp("corpus") / "umls.txt"
    path.write_text("\n\n".join(line.split("\t", 1)[-1] for line in lines) + "\n")
    return path


def test_packing_round_trip_and_split(text: Path) -> None:
    tok = load_tokenizer("tiny-bert")
    tokens = C.tokenize_files([text], tok)
    docs = [d for d in text.read_text().split("\n\n") if d.strip()]
    assert int((tokens == tok.sep_token_id).sum()) == len(docs)
    # the stream decodes back to the documents, in order, each closed by [SEP]
    first = tokens[: int((tokens == tok.sep_token_id).nonzero()[0]) + 1].tolist()
    assert tok.decode(first[:-1]) == tok.decode(tok(docs[0], add_special_tokens=False)["input_ids"])
    train, valid = C.split_blocks(tokens, 64, 0.1)
    blocks = [train[i][1] for i in range(len(train))] + [valid[i][1] for i in range(len(valid))]
    assert torch.equal(torch.cat(blocks), tokens[: len(blocks) * 64].to(torch.int64))
    assert len(valid) == round(len(tokens) // 64 * 0.1) and valid[0][0] == len(train)
    with pytest.raises(DataError, match="corpus too small"):
        C.split_blocks(tokens[:100], 64, 0.1)


def test_tokenized_corpus_is_cached_by_tokenizer_and_content(text: Path, tmp_path: Path, monkeypatch) -> None:
    tok = load_tokenizer("tiny-bert")
    first = C.load_corpus([text], tok, tmp_path)
    cached = list((tmp_path / "tokens").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".safetensors"  # no temp file left behind

    def boom(*_a, **_k):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(C, "tokenize_files", boom)
    assert torch.equal(C.load_corpus([text], tok, tmp_path), first)
    monkeypatch.undo()
    changed = tmp_path / "changed.txt"
    changed.write_text(text.read_text() + "\nOne more line.\n")
    assert len(C.load_corpus([changed], tok, tmp_path)) > len(first)
    assert len(list((tmp_path / "tokens").iterdir())) == 2
    other = load_tokenizer("tiny-bert")
    other.add_tokens(["kelmword"])
    assert C.cache_key([text], other) != C.cache_key([text], tok)
    with pytest.raises(DataError, match="invalid UTF-8"):
        bad = tmp_path / "bad.txt"
        bad.write_bytes(b"fine\n\xff\xfe\n")
        C.load_corpus([bad], tok, tmp_path)


def test_mlm_masking() -> None:
    torch.manual_seed(0)
    ids = torch.randint(1000, 2000, (64, 128))
    ids[:, 0], ids[:, -1] = 101, 102
    special = (ids == 101) | (ids == 102)
    u = torch.rand(64, 128, 2)
    inputs, labels = mask_tokens(ids, u, torch.full_like(ids, 7), special, 103, 0.15)
    chosen = labels != IGNORE
    assert not chosen[special].any() and torch.equal(labels[chosen], ids[chosen])
    assert abs(float(chosen.float().mean()) - 0.15 * 126 / 128) < 0.01
    assert float((inputs[chosen] == 103).float().mean()) == pytest.approx(0.8, abs=0.03)
    assert float((inputs[chosen] == 7).float().mean()) == pytest.approx(0.1, abs=0.03)
    assert torch.equal(inputs[~chosen], ids[~chosen])
    # a row with no draw under p still predicts one token
    few, few_labels = mask_tokens(ids[:1], torch.ones(1, 128, 2), ids[:1], special[:1], 103, 0.15)
    assert int((few_labels != IGNORE).sum()) == 1


def test_training_masks_do_not_depend_on_world_size(text: Path, tmp_path: Path) -> None:
    task = build_task({"name": "mlm", "text": [str(text)], "cache_dir": str(tmp_path)} | TINY)
    assert isinstance(task, PretrainTask)
    one = next(iter(ShardedBatches(task.train_data(), task.collate, 8, 0, 1, seed=1, batch_random=True)))
    halves = [
        next(iter(ShardedBatches(task.train_data(), task.collate, 8, r, 2, seed=1, batch_random=True))) for r in (0, 1)
    ]
    merged = torch.empty_like(one["labels"])
    merged[0::2], merged[1::2] = halves[0]["labels"], halves[1]["labels"]
    assert torch.equal(merged, one["labels"])
    # held-out masks are fixed per block
    a = task.collate([task.eval_data()[0]])
    b = task.collate([task.eval_data()[0]])
    assert torch.equal(a["labels"], b["labels"])


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_pretrain_cli_lowers_perplexity(objective: str, text: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("KELM_CACHE_DIR", str(tmp_path / "cache"))
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        "[task]\nhidden_size = 64\nnum_layers = 1\nnum_heads = 2\nblock_size = 32\nvalid_fraction = 0.05\n"
        '[train]\nthreads = 2\ntensorboard = false\nlog_every = 20\nschedule = "constant"\n'
    )
    out = tmp_path / objective
    args = ["pretrain", str(cfg), "--objective", objective, "--text", str(text), "--max-steps", "30"]
    assert main(args + TRAIN + ["--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    valid = metrics["valid"]
    assert valid["perplexity"] == pytest.approx(math.exp(valid["loss"]))
    assert valid["loss"] < math.log(30522) - 1.0, valid  # well below a uniform guess (10.3)
    assert (out / "model" / "config.json").is_file()
    from kelm.lm.hf import load_finetuned

    model, _, spec = load_finetuned(out)
    assert spec["head"] == objective and model.config.vocab_size == 30522
    capsys.readouterr()
    assert main(["predict", "--model", str(out)]) == 2
    assert "no predictions" in capsys.readouterr().err
