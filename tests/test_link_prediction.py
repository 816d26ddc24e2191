"""Link prediction: training learns, the CLI trains and predicts, bad input fails in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from kelm.app import run_training
from kelm.cli import main
from kelm.errors import ConfigError, DataError
from kelm.kge.training import contrastive_loss
from kelm.tasks import build_task
from kelm.tasks.link_prediction import LinkPredictionTask
from kelm.train.sparse_grads import dense_embedding_grads

TRAIN = {
    "threads": 1,
    "strategy": "single",
    "optimizer": "adagrad",
    "lr": 0.05,
    "schedule": "constant",
    "batch_size": 64,
    "log_every": 20,
    "tensorboard": False,
}


def task_table(data_dir: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "link-prediction", "dataset": "nations", "data_dir": str(data_dir), "dim": 32} | extra


def random_mrr(task: LinkPredictionTask) -> float:
    torch.manual_seed(0)
    model = task.build_model()
    batch = task.collate([task.test_data()[i] for i in range(len(task.test_data()))])
    return task.evaluate(model, [batch])["mrr"]


def train(data_dir: Path, out: Path, epochs: int, **extra: Any) -> dict[str, Any]:
    return run_training({"task": task_table(data_dir, **extra), "train": TRAIN | {"epochs": epochs}}, out)


def test_one_to_n_learns(data_dir: Path, tmp_path: Path) -> None:
    cfg = {"dataset": "umls", "loss": "bce", "label_smoothing": 0.1}
    task = build_task(task_table(data_dir, **cfg))
    assert isinstance(task, LinkPredictionTask)
    baseline = random_mrr(task)
    summary = run_training(
        {"task": task_table(data_dir, **cfg), "train": TRAIN | {"epochs": 5, "lr": 0.1, "batch_size": 128}},
        tmp_path / "run",
    )
    test = summary["test"]
    assert set(test) == {"mrr", "mr", "hits@1", "hits@3", "hits@10"}
    assert test["mrr"] > max(3 * baseline, 0.3), (test, baseline)


@pytest.mark.parametrize(
    ("extra", "sampler"),
    [
        ({"loss": "self-adversarial", "margin": 6.0}, "uniform"),
        ({"loss": "margin", "reciprocal": False}, "bernoulli"),
        ({"loss": "softplus", "reciprocal": False}, "shared"),
        ({"loss": "ce"}, "shared"),
    ],
)
def test_negative_sampling_learns(data_dir: Path, tmp_path: Path, extra: dict[str, Any], sampler: str) -> None:
    cfg = {"training": "negative-sampling", "model": "distmult", "num_negatives": 8, "sampler": sampler} | extra
    baseline = random_mrr(build_task(task_table(data_dir, **cfg)))
    summary = train(data_dir, tmp_path / "run", epochs=6, **cfg)
    assert summary["test"]["mrr"] > max(baseline + 0.2, 0.6), (summary["test"], baseline)


def test_ce_negative_sampling_loss_is_softmax_cross_entropy_of_the_true_entity() -> None:
    pos, neg = torch.randn(5), torch.randn(5, 7)
    ref = F.cross_entropy(torch.cat([pos[:, None], neg], 1), torch.zeros(5, dtype=torch.long))
    assert torch.allclose(contrastive_loss(pos, neg, "ce", 1.0, 1.0), ref)


def test_head_and_tail_queries_with_regularizer(data_dir: Path, tmp_path: Path) -> None:
    summary = train(
        data_dir, tmp_path / "run", epochs=10, reciprocal=False, loss="ce", regularizer="n3", regularizer_weight=1e-3
    )
    assert summary["valid"]["mrr"] > 0.5


def test_batch_weight_counts_ranking_queries(data_dir: Path) -> None:
    task = build_task(task_table(data_dir))
    batch = task.collate([task.eval_data()[i] for i in range(5)])
    assert task.batch_weight(batch) == 10
    train_batch = task.collate(list(range(7)))
    assert task.batch_weight(train_batch) == 7
    assert task.model_config()["model"]["reciprocal"] is True


def _dense_1n_reference(task: LinkPredictionTask, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The 1-N loss written the textbook way: a dense (B, E) smoothed target."""
    q, rows, cols = batch["query"], batch["target_rows"], batch["target_cols"]
    e, r, is_tail = q[:, 0], q[:, 1], q[:, 2].bool()
    logits = torch.stack(
        [
            model("score_t", e[i : i + 1], r[i : i + 1])[0]
            if is_tail[i]
            else model("score_h", r[i : i + 1], e[i : i + 1])[0]
            for i in range(len(q))
        ]
    )
    target = torch.zeros_like(logits)
    target[rows, cols] = 1.0
    eps, E = task.cfg.label_smoothing, logits.shape[1]
    if task.cfg.loss_name == "bce":
        target = (1 - eps) * target + eps / E
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(q)
    target = (1 - eps) * target / target.sum(1, keepdim=True) + eps / E
    return -(target * torch.log_softmax(logits, 1)).sum(1).mean()


@pytest.mark.parametrize("loss", ["bce", "ce"])
@pytest.mark.parametrize("reciprocal", [True, False])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_one_to_n_loss_equals_dense_target(data_dir: Path, loss: str, reciprocal: bool, eps: float) -> None:
    task = build_task(task_table(data_dir, loss=loss, reciprocal=reciprocal, label_smoothing=eps))
    torch.manual_seed(0)
    model = task.build_model()
    batch = task.collate(list(range(0, 300, 7)))
    assert (~batch["query"][:, 2].bool()).any() != reciprocal  # head queries only without reciprocal relations
    got, _ = task.loss(model, batch)
    grads = torch.autograd.grad(got, list(model.parameters()))
    want = _dense_1n_reference(task, model, batch)
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(grads, want_grads, strict=True):  # lookups give row-sparse gradients
        torch.testing.assert_close(g.to_dense(), w.to_dense(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sampler", ["uniform", "bernoulli", "shared"])
def test_negative_sampling_scores_equal_triple_scores(data_dir: Path, sampler: str) -> None:
    """Batched candidate scoring gives exactly the scores of the corrupted triples, either side."""
    cfg = {"training": "negative-sampling", "model": "complex", "reciprocal": False, "sampler": sampler}
    task = build_task(task_table(data_dir, loss="margin", num_negatives=5, **cfg))
    torch.manual_seed(0)
    model = task.build_model()
    batch = task.collate(list(range(40)))
    h, r, t = batch["triples"].unbind(1)
    neg, head = batch["negatives"], batch["corrupt_head"]
    assert head.any() and (~head).any()
    neg = neg.expand(len(h), -1) if neg.dim() == 1 else neg
    hh = torch.where(head[:, None], neg, h[:, None])
    tt = torch.where(head[:, None], t[:, None], neg)
    ref_neg = model("score_hrt", hh.reshape(-1), r.repeat_interleave(neg.shape[1]), tt.reshape(-1)).view_as(neg)
    ref = contrastive_loss(model("score_hrt", h, r, t), ref_neg, "margin", task.cfg.margin, 1.0)
    got, _ = task.loss(model, batch)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("model_name", "training", "sampler"),
    [
        ("complex", "negative-sampling", "shared"),
        ("complex", "negative-sampling", "uniform"),
        ("rotate", "negative-sampling", "shared"),
        ("rotate", "negative-sampling", "uniform"),
        ("distmult", "1-n", "uniform"),
    ],
)
def test_row_sparse_lookups_train_exactly_as_dense_ones(
    data_dir: Path, model_name: str, training: str, sampler: str
) -> None:
    """Three Adagrad steps with row-sparse table gradients end at the dense run's parameters."""
    cfg = {"model": model_name, "training": training, "sampler": sampler, "num_negatives": 7}
    task = build_task(task_table(data_dir, **cfg))
    runs = []
    for dense in (False, True):
        torch.manual_seed(0)
        model = task.build_model()
        if dense:
            assert dense_embedding_grads(model) == 2  # entity and relation tables
        assert model.kge.sparse_table_grads is not dense
        opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
        torch.manual_seed(1)
        for step in range(3):
            batch = task.collate(list(range(32 * step, 32 * step + 32)))
            opt.zero_grad()
            task.loss(model, batch)[0].backward()
            assert all(not p.grad.is_sparse for p in model.parameters())
            opt.step()
        runs.append([p.detach().clone() for p in model.parameters()])
    for sparse_p, dense_p in zip(*runs, strict=True):
        torch.testing.assert_close(sparse_p, dense_p, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def cli_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kge")
    cfg = root / "lp.toml"
    cfg.write_text(
        '[task]\nname = "link-prediction"\ndataset = "umls"\nmodel = "distmult"\ndim = 64\n'
        '[train]\nstrategy = "single"\nthreads = 1\noptimizer = "adagrad"\nbatch_size = 128\n'
        'log_every = 20\ntensorboard = false\nschedule = "constant"\n',
        encoding="utf-8",
    )
    out = root / "run"
    args = [
        "kge",
        "train",
        str(cfg),
        "--data-dir",
        str(data_dir),
        "--model",
        "complex",
        "--dim",
        "32",
        "--epochs",
        "2",
        "--lr",
        "0.1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    return out


def test_cli_train_writes_metrics_and_vocabularies(cli_run: Path) -> None:
    metrics = json.loads((cli_run / "metrics.json").read_text(encoding="utf-8"))
    for split in ("valid", "test"):
        assert {"mrr", "mr", "hits@1", "hits@3", "hits@10"} <= set(metrics[split])
    assert metrics["config"]["task"]["model"] == "complex" and metrics["config"]["task"]["dim"] == 32
    per_rel = metrics["test_per_relation"]
    assert sum(m["count"] for m in per_rel.values()) == 2 * 661  # every test triple, both sides
    weighted = sum(m["mrr"] * m["count"] for m in per_rel.values()) / (2 * 661)
    assert weighted == pytest.approx(metrics["test"]["mrr"], rel=1e-9)
    assert all({"label", "mr", "hits@1", "hits@10"} <= set(m) for m in per_rel.values())
    model = cli_run / "model"
    assert (model / "model.safetensors").is_file() and (model / "config.toml").is_file()
    lines = (model / "entities.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "index\tid\tlabel" and len(lines) == 136
    assert (model / "relations.tsv").read_text(encoding="utf-8").splitlines()[1].startswith("0\t")


def test_cli_predict(cli_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entities = (cli_run / "model" / "entities.tsv").read_text(encoding="utf-8").splitlines()[1:]
    relations = (cli_run / "model" / "relations.tsv").read_text(encoding="utf-8").splitlines()[1:]
    head, rel = entities[0].split("\t")[1], relations[0].split("\t")[1]
    assert (
        main(["kge", "predict", "--model", str(cli_run), "--head", head, "--relation", rel, "--top", "3", "--json"])
        == 0
    )
    answers = json.loads(capsys.readouterr().out)["answers"]
    assert [a["rank"] for a in answers] == [1, 2, 3]
    assert all(a["label"] for a in answers) and answers[0]["score"] >= answers[-1]["score"]
    labels = {line.split("\t")[1]: line.split("\t")[2] for line in entities}
    assert main(["kge", "predict", "--model", str(cli_run), "--head", head, "--relation", rel, "--top", "2"]) == 0
    assert labels[answers[0]["id"]].split()[0] in capsys.readouterr().out  # rich may wrap long labels


def error_line(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_predict_unknown_entity_and_relation(cli_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["kge", "predict", "--model", str(cli_run)]
    assert "unknown entity 'atlantis'" in error_line(capsys, [*base, "--head", "atlantis", "--relation", "x"])
    head = (cli_run / "model" / "entities.tsv").read_text(encoding="utf-8").splitlines()[1].split("\t")[1]
    assert "unknown relation 'nope'" in error_line(capsys, [*base, "--head", head, "--relation", "nope"])


def test_bad_inputs_are_one_line(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["kge", "train", "--dataset", "nations", "--data-dir", str(data_dir), "--out", str(tmp_path / "x")]
    assert "unknown KGE model 'foo'" in error_line(capsys, [*base, "--model", "foo"])
    assert "even" in error_line(capsys, [*base, "--model", "rotate", "--dim", "15"])
    assert "unknown key" in error_line(capsys, ["train", "--out", str(tmp_path / "y"), str(_config(tmp_path))])
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "train.txt").write_text("a\tr\tb\nb\tr\tc\n", encoding="utf-8")
    (folder / "test.txt").write_text("a\tr\tc\n", encoding="utf-8")
    err = error_line(capsys, ["kge", "train", "--dataset", str(folder), "--out", str(tmp_path / "z")])
    assert "split 'valid'" in err
    (folder / "valid.txt").write_text("", encoding="utf-8")
    assert "valid.txt" in error_line(capsys, ["kge", "train", "--dataset", str(folder), "--out", str(tmp_path / "z")])


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text('[task]\nname = "link-prediction"\ndataset = "nations"\nnegatives = 3\n', encoding="utf-8")
    return path


def test_mismatched_loss_and_empty_split_errors(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="loss 'margin' does not fit"):
        build_task(task_table(data_dir, loss="margin"))
    with pytest.raises(DataError, match="split 'dev'"):
        build_task(task_table(data_dir, valid_split="dev"))


def test_per_row_negatives_skip_the_true_entity(data_dir: Path) -> None:
    cfg = {"training": "negative-sampling", "reciprocal": False, "sampler": "uniform", "num_negatives": 64}
    task = build_task(task_table(data_dir, **cfg))
    torch.manual_seed(0)
    batch = task.collate(list(range(200)))
    h, _, t = batch["triples"].unbind(1)
    true = torch.where(batch["corrupt_head"], h, t)
    assert not (batch["negatives"] == true[:, None]).any()
    assert set(batch["negatives"].unique().tolist()) == set(range(14))  # nations: every entity is drawn


@pytest.mark.parametrize("reciprocal", [True, False])
def test_one_vs_all_learns(data_dir: Path, tmp_path: Path, reciprocal: bool) -> None:
    cfg = {"training": "1-vs-all", "reciprocal": reciprocal, "label_smoothing": 0.1}
    task = build_task(task_table(data_dir, **cfg))
    baseline = random_mrr(task)
    batch = task.collate(list(range(32)))
    h, r, t = batch["triples"].unbind(1)
    model = task.build_model()
    want = torch.nn.functional.cross_entropy(model("score_t", h, r), t, label_smoothing=0.1)
    if not reciprocal:
        want = want + torch.nn.functional.cross_entropy(model("score_h", r, t), h, label_smoothing=0.1)
    torch.testing.assert_close(task.loss(model, batch)[0], want)
    summary = train(data_dir, tmp_path / "run", epochs=12, **cfg)
    assert summary["test"]["mrr"] > max(baseline + 0.2, 0.6), (summary["test"], baseline)


def test_early_stopping_ends_with_the_best_model(data_dir: Path, tmp_path: Path) -> None:
    from kelm.train.logging import read_metrics

    train_cfg = TRAIN | {"epochs": 40, "lr": 0.5, "eval_every": 2, "early_stopping_patience": 2}
    summary = run_training({"task": task_table(data_dir, dim=16), "train": train_cfg}, tmp_path / "run")
    assert summary["stopped_early"]
    evals = {r.step: r.value for r in read_metrics(tmp_path / "run") if r.split == "valid" and r.name == "mrr"}
    best_step = max(evals, key=evals.get)
    assert summary["best_step"] == best_step < summary["steps"]
    assert summary["valid"]["mrr"] == pytest.approx(max(evals.values()), abs=1e-7)  # evaluated again: best weights
