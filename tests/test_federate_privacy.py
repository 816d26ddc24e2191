"""Differential privacy on federated clients: Opacus' per-sample gradients of kelm's models are
exact, the accountant's ε stays within the target, and models Opacus cannot handle are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kelm.app.federate.privacy import FROZEN_UNDER_DP, PrivacyPlan, check_private_task, freeze
from kelm.errors import ConfigError

pytest.importorskip("opacus")


def _classification_task(root: Path, n: int = 64):
    from serving import cue_word_task

    from kelm.app.run import load_run_config

    # two layers; kelm's speed-ups that rewrite forward passes are off, as a private run has them
    extra = {"num_layers": 2, "sparse_embedding_grads": False, "short_row_attention": False}
    task = cue_word_task(root, {"train": (n, 0)}, **extra)
    run = load_run_config({"task": task, "train": {"tensorboard": False, "weight_decay": 0.01}})
    return run.build_task(), run.config.train


def test_opacus_per_sample_gradients_equal_one_sample_at_a_time(tmp_path: Path) -> None:
    """Through the classification task's own model, loss and batches (first-token last layer on)."""
    from opacus import GradSampleModule

    task, train = _classification_task(tmp_path)
    task.configure(train)
    torch.manual_seed(0)
    model = task.build_model()
    model.train()
    for m in model.modules():  # dropout off: the two ways must see the same network
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    trained = freeze(model, [], private=True)
    assert not any(part in n for n in trained for part in FROZEN_UNDER_DP)
    samples = [task.train_data()[i] for i in range(6)]
    wrapped = GradSampleModule(model, loss_reduction="mean")
    task.loss(wrapped, task.collate(samples))[0].backward()
    per_sample = {n: p.grad_sample.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(g.shape[0] == 6 for g in per_sample.values())
    wrapped.zero_grad()
    for i, s in enumerate(samples):
        model.zero_grad()
        task.loss(model, task.collate([s]))[0].backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(per_sample[name][i], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_kge_models_are_refused_under_dp() -> None:
    class KGETask:
        train_triples = torch.zeros(1, 3)

    with pytest.raises(ConfigError, match="KGE models cannot be trained with differential privacy"):
        check_private_task(KGETask())


def test_accountant_epsilon_grows_with_steps() -> None:
    plan = PrivacyPlan(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.05, delta=1e-5)
    assert plan.epsilon(0) == 0.0
    assert 0 < plan.epsilon(50) < plan.epsilon(200) < plan.epsilon(800)


def test_a_private_federated_run_spends_at_most_its_epsilon(data_dir: Path, tmp_path: Path) -> None:
    from kelm.app.federate.simulate import simulate
    from kelm.app.run import load_run_config

    task, _ = _classification_task(tmp_path, 240)
    cfg = {
        "task": task.cfg.model_dump(),
        "train": {"lr": 1e-3, "batch_size": 16, "tensorboard": False},
        "federate": {"clients": 2, "rounds": 2, "partition": "iid", "dp_epsilon": 4.0, "dp_delta": 1e-5},
    }
    summary = simulate(load_run_config(cfg), tmp_path / "run")
    privacy = summary["privacy"]
    assert 3.5 < privacy["epsilon"] <= 4.0 and privacy["delta"] == 1e-5  # the noise is set to just meet it
    assert [h["epsilon"] for h in summary["history"]][0] < privacy["epsilon"]
