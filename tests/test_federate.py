"""Federated kelm: partitions, update checks and averaging, and real runs on Flower's simulation engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kelm.app.federate.local import proximal_hook
from kelm.app.federate.partition import Partition, balanced_groups, sample_owners, triple_owners
from kelm.app.federate.updates import ROWS, WEIGHT, BadUpdate, Update, aggregate, check_update, encode_update
from kelm.errors import ConfigError

pytest.importorskip("flwr")


def _triples(n: int, entities: int, relations: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack(
        [
            torch.randint(entities, (n,), generator=g),
            torch.randint(relations, (n,), generator=g),
            torch.randint(entities, (n,), generator=g),
        ],
        1,
    )


# -- partitions -------------------------------------------------------------------------------------
def test_relation_split_puts_each_relation_on_one_client_and_balances_triples() -> None:
    splits = {"train": _triples(3000, 50, 20), "test": _triples(300, 50, 20, 1)}
    owners = triple_owners(splits, 50, 20, Partition(0, 3, "relation"))
    for name, t in splits.items():
        for r in range(20):
            assert len(set(owners[name][t[:, 1].numpy() == r])) <= 1  # a relation lives on one client
    train_rel = splits["train"][:, 1].numpy()
    test_rel = splits["test"][:, 1].numpy()
    for r in set(test_rel) & set(train_rel):  # valid/test follow their relation's client
        assert set(owners["test"][test_rel == r]) == set(owners["train"][train_rel == r])
    sizes = np.bincount(owners["train"], minlength=3)
    assert sizes.min() > 0.8 * sizes.max()


def test_balanced_groups_is_greedy_largest_first() -> None:
    assert sorted(np.bincount(balanced_groups(np.array([10, 1, 1, 9, 1]), 2, 0), weights=[10, 1, 1, 9, 1])) == [11, 11]


def test_entity_split_sends_a_triple_with_its_head() -> None:
    t = _triples(1000, 40, 5)
    owners = triple_owners({"train": t}, 40, 5, Partition(0, 4, "entity"))["train"]
    for h in range(40):
        assert len(set(owners[t[:, 0].numpy() == h])) <= 1


def test_dirichlet_split_is_a_partition_and_non_iid() -> None:
    labels = np.repeat(np.arange(4), 250)
    owners = sample_owners(len(labels), labels, Partition(0, 5, "dirichlet", seed=3, alpha=0.5))
    assert owners.shape == (1000,) and set(owners) <= set(range(5))
    shares = np.stack([np.bincount(labels[owners == c], minlength=4) for c in range(5)]) / 250
    # IID would give each client ~0.2 of every label; alpha 0.5 gives some clients most of a label.
    assert shares.max() > 0.45
    iid = sample_owners(len(labels), None, Partition(0, 5, "iid"))
    assert sorted(np.bincount(iid)) == [200] * 5


def test_a_split_the_task_cannot_use_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="does not split samples"):
        sample_owners(10, None, Partition(0, 2, "relation"))
    with pytest.raises(ConfigError, match="needs a task with one label"):
        sample_owners(10, None, Partition(0, 2, "dirichlet"))
    with pytest.raises(ConfigError, match="is not one of 3 clients"):
        Partition(3, 3, "iid")


# -- updates -----------------------------------------------------------------------------------------
def _reference() -> dict[str, torch.Tensor]:
    return {"kge.entity.weight": torch.zeros(6, 2), "head.weight": torch.zeros(3)}


ROW_PARAMS = frozenset({"kge.entity.weight"})


def _update(values: torch.Tensor, counts: torch.Tensor, head: torch.Tensor) -> dict[str, torch.Tensor]:
    return encode_update({"kge.entity.weight": values, "head.weight": head}, {"kge.entity.weight": counts})


def test_fede_averages_each_row_over_the_clients_that_use_it_weighted_by_counts() -> None:
    ref = _reference()
    ref["kge.entity.weight"][5] = 7.0  # a row nobody trains keeps its value
    a = _update(torch.full((6, 2), 1.0), torch.tensor([1.0, 3, 0, 0, 2, 0]), torch.tensor([1.0, 1, 1]))
    b = _update(torch.full((6, 2), 5.0), torch.tensor([1.0, 1, 4, 0, 0, 0]), torch.tensor([4.0, 4, 4]))
    assert a["kge.entity.weight"].shape == (3, 2) and a["kge.entity.weight" + ROWS].tolist() == [0, 1, 4]
    ups = [check_update(a, ref, 1.0, ROW_PARAMS), check_update(b, ref, 3.0, ROW_PARAMS)]
    out = aggregate(ups, ref, ROW_PARAMS)
    ent = out["kge.entity.weight"][:, 0].tolist()
    assert ent == pytest.approx(
        [3.0, 2.0, 5.0, 0.0, 1.0, 7.0]
    )  # (1·1+1·5)/2, (3·1+1·5)/4, only b, nobody, only a, kept
    assert out["head.weight"].tolist() == pytest.approx([3.25] * 3)  # FedAvg by examples: (1·1 + 3·4)/4


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda u: u.pop("head.weight"), "missing"),
        (lambda u: u.update({"extra": torch.zeros(1)}), "unexpected"),
        (lambda u: u.update({"head.weight": torch.zeros(4)}), "shape"),
        (lambda u: u.update({"head.weight": torch.zeros(3, dtype=torch.float64)}), "dtype"),
        (lambda u: u.update({"head.weight": torch.tensor([0.0, float("nan"), 0.0])}), "finite"),
        (lambda u: u.update({"kge.entity.weight" + ROWS: torch.tensor([0, 1, 9])}), "outside"),
        (lambda u: u.update({"kge.entity.weight" + ROWS: torch.tensor([0, 0, 1])}), "repeat"),
        (
            lambda u: u.update({"kge.entity.weight" + WEIGHT: torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)}),
            "positive",
        ),
        (lambda u: u.pop("kge.entity.weight" + ROWS), "expected rows"),
    ],
)
def test_a_corrupt_or_mismatched_update_is_rejected(change, reason) -> None:
    u = _update(torch.ones(6, 2), torch.tensor([1.0, 1, 0, 0, 1, 0]), torch.ones(3))
    change(u)
    with pytest.raises(BadUpdate, match=reason):
        check_update(u, _reference(), 10, ROW_PARAMS)


def test_examples_must_be_a_positive_number() -> None:
    u = _update(torch.ones(6, 2), torch.ones(6), torch.ones(3))
    for bad in (0, -1, float("nan"), "3"):
        with pytest.raises(BadUpdate, match="examples"):
            check_update(u, _reference(), bad, ROW_PARAMS)


def test_aggregate_of_one_client_is_its_update() -> None:
    ref = _reference()
    u = check_update(_update(torch.randn(6, 2), torch.ones(6), torch.randn(3)), ref, 5, ROW_PARAMS)
    out = aggregate([u], ref, ROW_PARAMS)
    assert torch.equal(out["head.weight"], u.tensors["head.weight"])
    assert torch.allclose(out["kge.entity.weight"], u.tensors["kge.entity.weight"])
    with pytest.raises(ValueError):
        aggregate([], ref, ROW_PARAMS)
    assert isinstance(u, Update)


def test_proximal_hook_adds_the_gradient_of_the_proximal_term() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    hook = proximal_hook(model, 0.3)
    # the anchor is the weights when the hook was made: compare against autograd of (mu/2)||w - anchor||²
    anchor = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(5, 4)
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    hook(opt, (), {})
    for p, g, a in zip(model.parameters(), plain, anchor, strict=True):
        assert torch.allclose(p.grad, g + 0.3 * (p.detach() - a))
    assert len(start) == 2


# -- federated runs on Flower's simulation engine --------------------------------------------------------
UMLS = {"name": "link-prediction", "dataset": "umls", "model": "complex", "dim": 64, "training": "1-n", "loss": "ce"}
TRAIN = {"optimizer": "adagrad", "lr": 0.1, "schedule": "constant", "batch_size": 128, "tensorboard": False}


def _config(path: Path, rounds: int, **fed) -> Path:
    import tomli_w

    cfg = {"task": UMLS, "train": TRAIN, "federate": {"clients": 3, "rounds": rounds, "client_threads": 1, **fed}}
    path.write_text(tomli_w.dumps(cfg), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def federated_umls(data_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch_module) -> tuple[Path, dict]:
    """UMLS split by relation over 3 clients, 4 rounds; client 1 sends NaNs in round 2."""
    from kelm.app.federate.simulate import simulate
    from kelm.app.run import load_run_config

    root = tmp_path_factory.mktemp("fed")
    monkeypatch_module.setenv("KELM_FEDERATE_FAULT", "corrupt:1:2")
    summary = simulate(load_run_config(_config(root / "fed.toml", 4)), root / "run")
    monkeypatch_module.delenv("KELM_FEDERATE_FAULT")
    return root, summary


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_federated_kge_learns_and_writes_a_kelm_model(federated_umls) -> None:
    root, summary = federated_umls
    run = root / "run"
    assert summary["rounds"] == 4 and len(summary["history"]) == 4
    assert summary["test"]["mrr"] > 0.6  # a random ranking of UMLS's 135 entities scores ~0.04
    # split by relation, the clients' own test parts are the whole test split
    assert summary["client_test"]["mrr"] == pytest.approx(summary["test"]["mrr"], abs=1e-9)
    valid = [h["valid"]["mrr"] for h in summary["history"]]
    assert valid[-1] > valid[0]
    from kelm.kge.folder import load_kge

    model, _ = load_kge(str(run / "model"))
    assert model.kge.entity.weight.shape[0] == 135
    assert json.loads((run / "metrics.json").read_text())["mode"] == "federated"


def test_a_corrupt_update_is_rejected_logged_and_the_round_goes_on(federated_umls) -> None:
    root, summary = federated_umls
    rounds = {h["round"]: h for h in summary["history"]}
    assert [rounds[r]["updates"] for r in (1, 2, 3, 4)] == [3, 2, 3, 3]
    events = [json.loads(line) for line in (root / "run" / "federate_events.jsonl").read_text().splitlines()]
    rejected = [e for e in events if e["event"] == "update-rejected"]
    assert len(rejected) == 1 and rejected[0]["round"] == 2 and "finite" in rejected[0]["reason"]


def test_federated_beats_each_client_alone(data_dir: Path, tmp_path: Path) -> None:
    """Ten clients holding random tenths of UMLS: alone, each knows too few triples of most
    entities; averaged per entity, they rank far better. (Split by relation over three clients,
    UMLS is dense enough that each client alone does well on its own relations.)"""
    from kelm.app.federate.baselines import train_local_only
    from kelm.app.federate.simulate import simulate
    from kelm.app.run import load_run_config

    config = _config(tmp_path / "fed.toml", 4, clients=10, partition="random")
    fed = simulate(load_run_config(config), tmp_path / "fed")
    local = train_local_only(load_run_config(config), tmp_path / "local")
    assert len(local["clients"]) == 10 and local["epochs"] == 4
    assert fed["client_test"]["mrr"] > 0.5 > 0.2 > local["client_test"]["mrr"]  # measured 0.64 and 0.10


def test_a_finished_run_resumes_from_its_state_for_more_rounds(federated_umls, monkeypatch) -> None:
    from kelm.app.federate.simulate import simulate
    from kelm.app.run import load_run_config

    root, first = federated_umls
    monkeypatch.delenv("KELM_FEDERATE_FAULT", raising=False)
    more = simulate(load_run_config(_config(root / "more.toml", 5)), root / "run")
    assert [h["round"] for h in more["history"]] == [1, 2, 3, 4, 5]
    assert more["history"][:4] == first["history"]


@pytest.mark.parametrize("algorithm", ["fedavg", "fedprox"])
def test_federated_fine_tuning_on_a_non_iid_split(tmp_path: Path, algorithm: str) -> None:
    """A tiny BERT classifier over 3 clients whose labels are Dirichlet(0.5)-skewed."""
    from serving import cue_word_task

    from kelm.app.federate.simulate import simulate
    from kelm.app.run import load_run_config

    task = cue_word_task(tmp_path, {"train": (300, 0), "dev": (80, 1)})
    train = {"lr": 3e-3, "batch_size": 16, "tensorboard": False}
    fed = {
        "clients": 3,
        "rounds": 12,
        "local_epochs": 2,
        "partition": "dirichlet",
        "algorithm": algorithm,
        "proximal_mu": 0.01,
    }
    summary = simulate(load_run_config({"task": task, "train": train, "federate": fed}), tmp_path / "run")
    sizes = [h["examples"] for h in summary["history"]]
    assert sizes == [300.0] * 12  # every sample on exactly one client
    assert summary["valid"]["accuracy"] > 0.85  # chance ~0.5; 1.0 from round 4-7 on (partition seeds 0, 1)
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_secure_aggregation_with_a_client_dropped_mid_round_equals_the_survivors_average(
    data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """SecAgg+ over 3 clients; in round 2 client 2 drops after sharing its keys. The server's new
    weights are the examples-weighted average of the two survivors' plaintext updates, up to the
    quantisation error, and the round goes on."""
    from kelm.app.federate.simulate import simulate
    from kelm.app.run import load_run_config

    dumps = tmp_path / "dumps"
    dumps.mkdir()
    monkeypatch.setenv("KELM_FEDERATE_DUMP", str(dumps))
    monkeypatch.setenv("KELM_FEDERATE_FAULT", "fail:2:2")
    fed = {"secure_aggregation": True, "secagg_threshold": 2, "secagg_max_weight": 1e4, "round_timeout": 120}
    summary = simulate(load_run_config(_config(tmp_path / "fed.toml", 2, **fed)), tmp_path / "run")
    assert [h["updates"] for h in summary["history"]] == [3, 2]
    got = torch.load(tmp_path / "run" / "federate_state.pt", weights_only=True)["weights"]
    survivors = [torch.load(dumps / f"round-2-client-{i}.pt", weights_only=True) for i in (0, 1)]
    assert not (dumps / "round-2-client-2.pt").exists()
    total = sum(s["examples"] for s in survivors)
    for name, value in got.items():
        expected = sum(s["update"][name].double() * s["examples"] for s in survivors) / total
        # each update is clipped to ±8, scaled by examples / 1e4 and quantised to 2**22 levels
        assert torch.allclose(value.double(), expected, atol=2e-4), name
        assert not torch.allclose(value.double(), survivors[0]["update"][name].double(), atol=1e-3)
    events = [json.loads(x) for x in (tmp_path / "run" / "federate_events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "clients-dropped" and e["round"] == 2 for e in events)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["federate", "CONFIG", "--out", "x", "--partition", "by-colour"], "federate.partition"),
        (["federate", "CONFIG"], "needs --out"),
        (["federate", "CONFIG", "--out", "x", "--partition", "dirichlet"], "does not split triples"),
        (["federate", "client", "--server", "127.0.0.1:1", "--data", "3/3"], "--data: expected I/N"),
        (["federate", "client", "--data", "0/3"], "--server HOST:PORT and --data I/N"),
        (["federate", "server", "CONFIG", "--out", "x", "--address", "nowhere"], "--address: expected HOST:PORT"),
    ],
)
def test_federate_usage_errors_are_one_line(tmp_path: Path, capsys, args: list[str], says: str) -> None:
    from kelm.cli import main

    config = _config(tmp_path / "fed.toml", 1)
    code = main([str(config) if a == "CONFIG" else a for a in args])
    err = capsys.readouterr().err
    assert code != 0 and says in err and "Traceback" not in err


def test_a_round_short_of_its_quorum_is_retried_then_fails_in_one_line(
    data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from kelm.app.federate.server import FederationError
    from kelm.app.federate.simulate import simulate
    from kelm.app.run import load_run_config

    monkeypatch.setenv("KELM_FEDERATE_FAULT", "fail:0:1")  # client 0 fails every attempt of round 1
    config = _config(tmp_path / "fed.toml", 2, min_clients=3, retries=1)
    with pytest.raises(FederationError, match="round 1: fewer than 3 good updates in 2 attempts"):
        simulate(load_run_config(config), tmp_path / "run")
    events = [json.loads(x)["event"] for x in (tmp_path / "run" / "federate_events.jsonl").read_text().splitlines()]
    assert events.count("client-failed") == 2 and events.count("round-retry") == 2
    assert not (tmp_path / "run" / "federate_state.pt").exists()  # no round finished, nothing saved


def test_federated_text_kgc_trains_a_bi_encoder_over_clients(data_dir: Path, tmp_path: Path) -> None:
    """The text-KGC task through the same clients: a tiny BERT bi-encoder, UMLS split by relation."""
    from kelm.app.federate.simulate import simulate
    from kelm.app.run import load_run_config

    task = {"name": "text-kgc", "dataset": "umls", "model": "tiny-bert", "hidden_size": 32, "num_layers": 2}
    task |= {"num_heads": 2, "max_length": 32}
    train = {"lr": 1e-3, "schedule": "constant", "warmup_ratio": 0.0, "batch_size": 32, "tensorboard": False}
    fed = {"clients": 3, "rounds": 2, "local_steps": 20, "client_threads": 1}
    summary = simulate(load_run_config({"task": task, "train": train, "federate": fed}), tmp_path / "run")
    assert summary["test"]["mrr"] > 0.1  # measured 0.154; chance ~0.04
    assert summary["client_test"]["mrr"] == pytest.approx(summary["test"]["mrr"], abs=1e-9)
    assert [h["examples"] for h in summary["history"]] == [5216.0, 5216.0]  # every training triple, once
