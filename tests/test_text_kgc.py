"""Text-based KG completion: loss math, masks, inductive splits, text fallback, hybrid scoring,
learning through the engine (tiny BERT), KEPLER, prediction, and one MiniLM step."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_text_kgc_helpers import FixedScorer, tiny_cfg, toy_kg

from kelm.kgc.inductive import REMOVED, inductive_split
from kelm.kgc.infonce import PreBatchQueue, contrastive_loss, known_answer_mask, triple_keys
from kelm.kgc.text_kgc import DescriptionWarning, entity_texts, transe_loss
from kelm.kge.evaluation import FilteredRankEvaluator
from kelm.kge.mixing import HybridScoring, standardize
from kelm.tasks.text_kgc import TextKGCTask
from kelm.train.config import TrainConfig
from kelm.train.distributed import shutdown
from kelm.train.trainer import Trainer


def _unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


# -- loss math ------------------------------------------------------------------------------------
def test_contrastive_loss_equals_hand_written_reference() -> None:
    B, N, P, D = 3, 4, 2, 5
    q, tails, heads, pre = _unit(B, D, seed=1), _unit(N, D, seed=2), _unit(B, D, seed=3), _unit(P, D, seed=4)
    positive = torch.tensor([0, 1, 2])
    tau, gamma = 0.07, 0.02
    mask = torch.zeros(B, N, dtype=torch.bool)
    mask[0, 3] = True  # a known answer of query 0: not a negative
    mask[1, 1] = True  # a mask on the positive itself is ignored
    self_mask = torch.tensor([False, True, False])  # query 1's head is a true answer
    pre_mask = torch.tensor([[False, False], [False, False], [True, False]])
    got = contrastive_loss(q, tails, positive, tau, gamma, mask, heads, self_mask, pre, pre_mask)

    total = 0.0
    for i in range(B):
        pos = (float(q[i] @ tails[positive[i]]) - gamma) / tau
        logits = [pos]
        logits += [float(q[i] @ tails[j]) / tau for j in range(N) if j != positive[i] and not mask[i, j]]
        if not self_mask[i]:
            logits.append(float(q[i] @ heads[i]) / tau)
        logits += [float(q[i] @ pre[k]) / tau for k in range(P) if not pre_mask[i, k]]
        top = max(logits)
        total += -(pos - top - math.log(sum(math.exp(x - top) for x in logits)))
    assert float(got) == pytest.approx(total / B, abs=1e-10)


def test_known_answer_mask_and_prebatch_queue() -> None:
    E, R = 5, 4
    known = torch.unique(triple_keys(torch.tensor([0, 0, 2]), torch.tensor([1, 1, 3]), torch.tensor([2, 4, 0]), E, R))
    m = known_answer_mask(torch.tensor([0, 2]), torch.tensor([1, 3]), torch.arange(E), known, E, R)
    assert m.tolist() == [[False, False, True, False, True], [True, False, False, False, False]]
    q = PreBatchQueue(2)
    assert q.get() is None
    for k in range(3):
        q.push(torch.full((2, 3), float(k), requires_grad=True), torch.tensor([k, k]))
    emb, ids = q.get()  # type: ignore[misc]
    assert ids.tolist() == [1, 1, 2, 2] and not emb.requires_grad
    assert PreBatchQueue(0).get() is None


def test_transe_loss_prefers_translations() -> None:
    h, r = _unit(4, 6, seed=5), 0.1 * _unit(4, 6, seed=6)
    assert float(transe_loss(h, r, h + r, 1.0)) < float(transe_loss(h, r, _unit(4, 6, seed=7), 1.0))


# -- data -----------------------------------------------------------------------------------------
def test_inductive_split_properties() -> None:
    from kelm.kg.datasets import load_graph

    kg = load_graph("umls")
    split = inductive_split(kg, 0.2, seed=3)
    unseen = split.unseen
    assert len(unseen) == round(0.2 * len(kg.entities)) == 27
    out = split.kg
    assert out.entities == kg.entities and out.relations == kg.relations
    assert all(t.head not in unseen and t.tail not in unseen for t in out.splits["train"])
    assert all(t.head in unseen or t.tail in unseen for t in out.splits[REMOVED])
    assert len(out.splits["train"]) + len(out.splits[REMOVED]) == len(kg.splits["train"])
    for name in ("valid", "test"):
        kept = out.splits[name]
        assert kept and all(t.head in unseen or t.tail in unseen for t in kept)
        assert len(kept) == sum(t.head in unseen or t.tail in unseen for t in kg.splits[name])
    assert inductive_split(kg, 0.2, seed=3).unseen == unseen
    assert inductive_split(kg, 0.2, seed=4).unseen != unseen


def test_entities_without_description_fall_back_with_one_warning() -> None:
    kg = toy_kg(items=8)
    for eid in ("red", "item1", "item2"):
        kg.entities[eid].description = None
    ids = sorted(kg.entities)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        texts = entity_texts(kg, ids, max_words=8)
    ours = [w for w in caught if issubclass(w.category, DescriptionWarning)]
    assert len(ours) == 1 and f"3 of {len(ids)} entities" in str(ours[0].message)
    assert texts[ids.index("red")] == "red" and texts[ids.index("blue")] == "blue: a color"


# -- hybrid ---------------------------------------------------------------------------------------
def test_hybrid_mixes_standardised_scores_and_reduces_to_each_side() -> None:
    E, R = 12, 3
    text, struct = FixedScorer(E, R, 1), FixedScorer(E, R, 2)
    h, r = torch.tensor([0, 5, 7]), torch.tensor([0, 2, 1])
    assert torch.equal(HybridScoring(text, struct, 1.0).score_t(h, r), text.score_t(h, r))
    assert torch.equal(HybridScoring(text, struct, 0.0).score_h(r, h), struct.score_h(r, h))
    mixed = HybridScoring(text, struct, 0.3).score_t(h, r)
    want = 0.3 * standardize(text.score_t(h, r)) + 0.7 * standardize(struct.score_t(h, r))
    assert torch.allclose(mixed, want)
    z = standardize(text.score_t(h, r))
    assert torch.allclose(z.mean(1), torch.zeros(3), atol=1e-6) and torch.allclose(
        z.std(1, unbiased=False), torch.ones(3)
    )
    triples = torch.tensor([[0, 0, 3], [5, 2, 1], [7, 1, 9], [2, 1, 2]])
    ev = FilteredRankEvaluator(triples[:2], E)
    for alpha, ref in ((1.0, text), (0.0, struct)):
        got = ev.rank(HybridScoring(text, struct, alpha), triples).ranks
        assert torch.equal(got, ev.rank(ref, triples).ranks)


# -- through the engine ---------------------------------------------------------------------------
def _fit(task: TextKGCTask, out: Path, **train: object) -> dict:
    cfg = {"strategy": "single", "batch_size": 16, "lr": 3e-3, "schedule": "constant", "tensorboard": False}
    cfg |= {"threads": 1, "log_every": 5, "max_steps": 30} | train
    try:
        return Trainer(task, TrainConfig(**cfg), out).fit()
    finally:
        shutdown()


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, float, float]:
    """A tiny BERT bi-encoder trained on the toy graph: run folder, summary, test tail-query MRR
    after training and of the untrained model."""
    torch.manual_seed(0)
    task = TextKGCTask(tiny_cfg(), kg=toy_kg(48))
    task.evaluate(task.build_model(), [task.collate(list(task.test_data()))])
    before = task.eval_details().metrics()["tail/mrr"]
    out = tmp_path_factory.mktemp("kgc") / "run"
    summary = _fit(task, out, max_steps=40, lr=1e-3)
    return out, summary, task.eval_details().metrics()["tail/mrr"], before


def test_text_model_learns_above_chance(toy_run: tuple[Path, dict, float, float]) -> None:
    """Colour questions about held-out items: the model must read the colour from the description."""
    out, summary, after, before = toy_run
    E = len(toy_kg(48).entities)
    chance = sum(1 / k for k in range(1, E + 1)) / E
    assert after > 3 * chance and after > before + 0.2, (after, before, chance)
    assert summary["test"]["mrr"] > chance
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) == {"mrr", "mr", "hits@1", "hits@3", "hits@10"}
    assert "has_color" in metrics["test_per_relation"]


def test_predict_command_labels_answers(
    toy_run: tuple[Path, dict, float, float], capsys: pytest.CaptureFixture
) -> None:
    from kelm.cli import main

    out = toy_run[0]
    assert main(["kgc", "predict", "--model", str(out), "--head", "item 0", "--relation", "has color", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["head"] == "item0" and len(answer["answers"]) == 10
    assert {"rank", "id", "label", "score"} <= set(answer["answers"][0])


def test_kepler_joint_objective_decreases(tmp_path: Path) -> None:
    """TransE over text embeddings and MLM on descriptions both go down; the model reloads."""
    from kelm.kgc.text_kgc import load_text_kgc

    task = TextKGCTask(tiny_cfg(kepler=True, kepler_weight=1.0), kg=toy_kg())

    def components(model: torch.nn.Module) -> tuple[float, float]:
        torch.manual_seed(1)  # the same batch and MLM masks every time
        with torch.no_grad():
            _, logs = task.loss(model.eval(), task.collate(list(range(32))))
        return logs["ke_loss"], logs["mlm_loss"]

    torch.manual_seed(0)  # the engine seeds the same way (train.seed 0), so this is its initial model
    ke0, mlm0 = components(task.build_model())
    summary = _fit(task, tmp_path / "run", max_steps=20, lr=5e-3)
    ke1, mlm1 = components(load_text_kgc(tmp_path / "run").model)
    assert ke1 < ke0 and mlm1 < mlm0, (ke0, ke1, mlm0, mlm1)
    rows = [r.split(",") for r in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]]
    losses = [float(v) for _, split, name, v in rows if split == "train" and name == "loss"]
    assert len(losses) == 4 and losses[-1] < losses[0] and summary["steps"] == 20


@pytest.fixture(scope="module")
def toy_kge(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A DistMult run on the toy graph (5 steps): its folder and its task."""
    from kelm.tasks.link_prediction import LinkPredictionConfig, LinkPredictionTask

    lp = LinkPredictionTask(LinkPredictionConfig(dataset="toy", model="distmult", dim=8), kg=toy_kg())
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("kge") / "run"
    try:
        Trainer(lp, TrainConfig(strategy="single", tensorboard=False, threads=1, max_steps=5, batch_size=8), out).fit()
    finally:
        shutdown()
    return out, lp


def test_hybrid_with_a_trained_kge_model(
    toy_run: tuple[Path, dict, float, float], toy_kge: tuple[Path, object]
) -> None:
    """alpha = 0 ranks exactly as the KGE model; alpha = 1 exactly as the text model alone."""
    from kelm.kgc.text_kgc import load_text_kgc
    from kelm.kge.mixing import load_structural

    kge_dir, lp = toy_kge
    kg = toy_kg()
    text_model = load_text_kgc(toy_run[0]).model
    test_batch = [{"eval_triples": torch.as_tensor(lp.test_triples)}]
    kge = load_structural(kge_dir, lp.tensors.entity_ids, lp.tensors.relation_ids).model
    want_struct = lp.evaluate(kge, test_batch)
    want_text = TextKGCTask(tiny_cfg(), kg=kg).evaluate(text_model, test_batch)
    for alpha, want in ((0.0, want_struct), (1.0, want_text)):
        task = TextKGCTask(tiny_cfg(hybrid_kge=str(kge_dir), alpha=alpha), kg=kg)
        got = task.finalize_metrics(task.evaluate(text_model, test_batch))
        assert {k: got[k] for k in want} == pytest.approx(want) and got["alpha"] == alpha
        assert {k: got[f"structure/{k}"] for k in want} == pytest.approx(want_struct)
        assert {k: got[f"text/{k}"] for k in want} == pytest.approx(want_text)
    task = TextKGCTask(tiny_cfg(hybrid_kge=str(kge_dir), alpha=0.5), kg=kg)
    assert 0 < task.finalize_metrics(task.evaluate(text_model, test_batch))["mrr"] <= 1


def test_hybrid_alpha_is_chosen_on_valid_and_applied_to_test(
    toy_run: tuple[Path, dict, float, float], toy_kge: tuple[Path, object]
) -> None:
    """Valid: the α of the best valid MRR; test: that α again, whatever test's own best is."""
    from kelm.kgc.text_kgc import load_text_kgc
    from kelm.kge.mixing import HybridScoring, best_alpha

    kge_dir, _ = toy_kge
    text_model = load_text_kgc(toy_run[0]).model
    task = TextKGCTask(tiny_cfg(hybrid_kge=str(kge_dir), alpha_grid=[0.0, 0.25, 0.5, 0.75, 1.0]), kg=toy_kg())
    valid = task.collate(list(task.eval_data()))
    test = task.collate(list(task.test_data()))
    assert (valid["eval_split"], test["eval_split"]) == ("valid", "test")
    raw_valid = task.evaluate(text_model, [valid])
    per_alpha = {a: raw_valid[f"alpha={a:g}/mrr"] for a in (0.0, 0.25, 0.5, 0.75, 1.0)}
    chosen = task.finalize_metrics(raw_valid)
    assert chosen["alpha"] == best_alpha(per_alpha) and chosen["mrr"] == max(per_alpha.values())
    raw_test = task.evaluate(text_model, [test])
    # pretend test prefers another alpha: finalize must still apply the valid-chosen one
    other = next(a for a in per_alpha if a != chosen["alpha"])
    raw_test[f"alpha={other:g}/mrr"] = 2.0
    reported = task.finalize_metrics(raw_test)
    assert reported["alpha"] == chosen["alpha"]
    direct = task.evaluator().rank(
        HybridScoring(task._text_scoring(text_model), task.structural, chosen["alpha"]), task.test_triples
    )
    assert reported["mrr"] == pytest.approx(direct.metrics()["mrr"])
    assert task.model_config()["model"]["alpha"] == chosen["alpha"]


def test_hybrid_run_records_the_valid_chosen_alpha(tmp_path: Path, toy_kge: tuple[Path, object]) -> None:
    """Through the engine: metrics.json holds the same α for valid and test, and the exported
    model predicts with it."""
    from kelm.kgc.text_kgc import load_text_kgc

    kge_dir, _ = toy_kge
    torch.manual_seed(0)
    task = TextKGCTask(tiny_cfg(hybrid_kge=str(kge_dir)), kg=toy_kg())
    summary = _fit(task, tmp_path / "run", max_steps=4)
    assert summary["valid"]["alpha"] == summary["test"]["alpha"] in task.cfg.alpha_grid
    assert {"structure/mrr", "text/mrr", "mrr"} <= set(summary["test"])
    assert not any(k.startswith("alpha=") for k in summary["test"])
    assert load_text_kgc(tmp_path / "run").spec["alpha"] == summary["valid"]["alpha"]


def test_hybrid_needs_valid_or_a_given_alpha(toy_kge: tuple[Path, object]) -> None:
    from kelm.errors import ConfigError

    with pytest.raises(ConfigError, match="task.alpha"):
        TextKGCTask(tiny_cfg(hybrid_kge=str(toy_kge[0]), valid_split=None), kg=toy_kg())
    with pytest.raises(ValueError, match="alpha"):
        tiny_cfg(alpha_grid=[0.5, 1.5])


def test_train_command_inductive(tmp_path: Path) -> None:
    """`kelm kgc train` on UMLS with an inductive split: the run records it and ranks the test split."""
    from kelm.cli import main

    out = tmp_path / "run"
    args = ["kgc", "train", "--dataset", "umls", "--model", "tiny-bert", "--max-length", "16", "--inductive", "0.2"]
    assert main(args + ["--max-steps", "2", "--batch-size", "8", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["task"]["inductive"] == 0.2 and metrics["steps"] == 2
    assert 0 < metrics["test"]["mrr"] <= 1


def test_minilm_bi_encoder_step() -> None:
    """MiniLM loads as the encoder (no pooler), embeds to unit vectors and gets gradients."""
    from kelm.tasks.text_kgc import TextKGCConfig

    task = TextKGCTask(TextKGCConfig(dataset="toy", model="minilm", max_length=16, pre_batch=0), kg=toy_kg(items=8))
    model = task.build_model()
    assert getattr(model.encoder, "pooler", None) is None
    loss, logs = task.loss(model, task.collate(list(range(8))))
    loss.backward()
    assert math.isfinite(float(loss.detach())) and logs["temperature"] == pytest.approx(0.05)
    assert model.log_temperature.grad is not None
    emb = model("encode", **task.texts.candidate_inputs([0, 1]))
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_train_command_hybrid_prints_the_chosen_alpha(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`kelm kgc train --hybrid-kge RUN` on UMLS without --alpha: α is chosen on valid and printed."""
    from kelm.cli import main

    kge = ["kge", "train", "--dataset", "umls", "--model", "distmult", "--dim", "8", "--training", "1-n"]
    assert main(kge + ["--max-steps", "2", "--out", str(tmp_path / "kge")]) == 0
    args = ["kgc", "train", "--dataset", "umls", "--model", "tiny-bert", "--max-length", "16"]
    args += [
        "--hybrid-kge",
        str(tmp_path / "kge"),
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path / "run"),
    ]
    capsys.readouterr()
    assert main(args) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert f"hybrid alpha {metrics['valid']['alpha']:g} (chosen on the valid split)" in capsys.readouterr().out
    # evaluating the finished run again gives its numbers; a one-value grid forces that alpha
    assert main(["kgc", "evaluate", "--model", str(tmp_path / "run"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["test"] == pytest.approx(metrics["test"]) and again["valid"]["alpha"] == metrics["valid"]["alpha"]
    assert set(again["valid_mrr_by_alpha"]) == {f"{i / 10:g}" for i in range(11)}
    again_args = ["kgc", "evaluate", "--model", str(tmp_path / "run"), "--hybrid-kge", str(tmp_path / "kge")]
    assert main(again_args + ["--alpha-grid", "1", "--json"]) == 0
    text_only = json.loads(capsys.readouterr().out)["test"]
    assert text_only["alpha"] == 1.0 and text_only["mrr"] == pytest.approx(metrics["test"]["text/mrr"])
    assert main(["kgc", "evaluate", "--model", str(tmp_path / "run"), "--alpha-grid", "x"]) == 2
