"""Each parallel strategy checked at world size 2 (gloo, CPU) against a reference.

Every worker below runs in two spawned processes (`distributed_harness.run_distributed`) and
returns tensors; the tests compare them here. One module-scoped run feeds several tests.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from distributed_harness import run_distributed
from torch import nn
from torch.distributed.tensor import DTensor

from kelm.errors import ConfigError
from kelm.tasks.causal_lm import CausalLMConfig, CausalLMTask
from kelm.train import comm
from kelm.train.config import TrainConfig
from kelm.train.distributed import DistInfo
from kelm.train.strategies import DDPStrategy, DiLoCoStrategy, Strategy, build_strategy

WORLD = 2
GLOBAL_BATCH = 8
CORPUS = "\n".join(f"{i} little pigs went to market and {i * 7 % 13} came home." for i in range(300)).encode()


# -- helpers used inside the workers ------------------------------------------------------


def _task() -> CausalLMTask:
    """A byte-level LM small enough for CPU: GPT(vocab 256, seq_len 16, d_model 32, 2 layers, 2 heads)."""
    return CausalLMTask(CausalLMConfig(seq_len=16, d_model=32, n_layer=2, n_head=2), corpus=CORPUS)


def _cfg(**kw: Any) -> TrainConfig:
    return TrainConfig(tensorboard=False, threads=1, **kw)


def _info(rank: int, world: int) -> DistInfo:
    return DistInfo(rank, world, rank, torch.device("cpu"))


def _global_batch(task: CausalLMTask, k: int) -> dict[str, torch.Tensor]:
    data = task.train_data()
    return task.collate([data[i] for i in range(k * GLOBAL_BATCH, (k + 1) * GLOBAL_BATCH)])


def _shard(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """This rank's share of a global batch, as `ShardedBatches` takes it."""
    return {k: v[rank::world] for k, v in batch.items()}


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def _clean(name: str) -> str:
    return name.replace("_checkpoint_wrapped_module.", "").removeprefix("module.")


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) parameters by unwrapped name. Collective for FSDP2 models."""
    return {_clean(n): _full(p) for n, p in model.named_parameters()}


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {_clean(n): _full(p.grad) for n, p in model.named_parameters()}


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _assert_close_dicts(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float, rtol: float = 0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


# -- 1. DDP == single process ---------------------------------------------------------------


def _ddp_worker(rank: int, world: int) -> dict[str, Any]:
    comm.install()
    task = _task()
    torch.manual_seed(0)
    ref = task.build_model()
    strategy = DDPStrategy(_cfg(strategy="ddp"), _info(rank, world))
    ddp = strategy.wrap(copy.deepcopy(ref))
    batches = [_global_batch(task, k) for k in range(2)]

    task.loss(ddp, _shard(batches[0], rank, world))[0].backward()
    task.loss(ref, batches[0])[0].backward()
    one_step = (_grads(ddp), _grads(ref))

    ddp.zero_grad(set_to_none=True)
    ref.zero_grad(set_to_none=True)
    reduces = []
    for i, batch in enumerate(batches):
        before = comm.calls("all_reduce")
        with strategy.sync(ddp, last_micro_batch=i == len(batches) - 1):
            loss = task.loss(ddp, _shard(batch, rank, world))[0]
        (loss / len(batches)).backward()  # after the block, as the Trainer does
        reduces.append(comm.calls("all_reduce") - before)
        (task.loss(ref, batch)[0] / len(batches)).backward()
    return {"one_step": one_step, "accum": (_grads(ddp), _grads(ref)), "reduces": reduces}


@pytest.fixture(scope="module")
def ddp_run() -> list[dict[str, Any]]:
    return run_distributed(_ddp_worker, WORLD)


def test_ddp_gradients_equal_single_process(ddp_run: list[dict[str, Any]]) -> None:
    for res in ddp_run:
        ddp_grads, ref_grads = res["one_step"]
        _assert_close_dicts(ddp_grads, ref_grads, atol=1e-6)


def test_ddp_grad_accumulation_equals_full_batch(ddp_run: list[dict[str, Any]]) -> None:
    for res in ddp_run:
        ddp_grads, ref_grads = res["accum"]
        _assert_close_dicts(ddp_grads, ref_grads, atol=1e-6)
        first, last = res["reduces"]
        assert first == 0 and last >= 1, "no_sync must defer the all-reduce to the last micro-batch"


# -- 2. FSDP2 == DDP ------------------------------------------------------------------------

FSDP_STEPS, FSDP_ACCUM, MAX_NORM = 3, 2, 0.1


def _train_steps(rank: int, world: int, strategy_name: str, checkpointing: bool) -> dict[str, Any]:
    task = _task()
    cfg = _cfg(strategy=strategy_name, activation_checkpointing=checkpointing)
    strategy = build_strategy(cfg, _info(rank, world), task.parallel_plan())
    torch.manual_seed(0)
    model = strategy.wrap(task.build_model())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    norms, scatters, clipped = [], [], {}
    for step in range(FSDP_STEPS):
        for micro in range(FSDP_ACCUM):
            before = comm.calls("reduce_scatter_single")
            batch = _shard(_global_batch(task, step * FSDP_ACCUM + micro), rank, world)
            with strategy.sync(model, last_micro_batch=micro == FSDP_ACCUM - 1):
                loss = task.loss(model, batch)[0]
            (loss / FSDP_ACCUM).backward()
            scatters.append(comm.calls("reduce_scatter_single") - before)
        norms.append(float(_full(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM))))
        if step == 0:
            clipped = _grads(model)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"params": _params(model), "norms": norms, "clipped": clipped, "scatters": scatters}


def _fsdp_worker(rank: int, world: int) -> dict[str, Any]:
    comm.install()
    return {
        "ddp": _train_steps(rank, world, "ddp", False),
        "fsdp2": _train_steps(rank, world, "fsdp2", False),
        "fsdp2_ac": _train_steps(rank, world, "fsdp2", True),
    }


@pytest.fixture(scope="module")
def fsdp_run() -> list[dict[str, Any]]:
    return run_distributed(_fsdp_worker, WORLD)


def test_fsdp2_training_equals_ddp(fsdp_run: list[dict[str, Any]]) -> None:
    for res in fsdp_run:
        _assert_close_dicts(res["fsdp2"]["params"], res["ddp"]["params"], atol=1e-5)
    _assert_close_dicts(fsdp_run[0]["fsdp2"]["params"], fsdp_run[1]["fsdp2"]["params"], atol=0)


def test_fsdp2_activation_checkpointing_equals_plain(fsdp_run: list[dict[str, Any]]) -> None:
    for res in fsdp_run:
        _assert_close_dicts(res["fsdp2_ac"]["params"], res["fsdp2"]["params"], atol=1e-6)


def test_fsdp2_clip_grad_norm_over_dtensors(fsdp_run: list[dict[str, Any]]) -> None:
    for res in fsdp_run:
        fsdp, ddp = res["fsdp2"], res["ddp"]
        assert min(ddp["norms"]) > MAX_NORM, "the test must actually clip"
        torch.testing.assert_close(fsdp["norms"], ddp["norms"], atol=1e-6, rtol=1e-5)
        _assert_close_dicts(fsdp["clipped"], ddp["clipped"], atol=1e-7)
        clipped_norm = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in fsdp["clipped"].values()]))
        assert math.isclose(float(clipped_norm), MAX_NORM, rel_tol=1e-4)


def test_fsdp2_no_sync_defers_reduce_scatter(fsdp_run: list[dict[str, Any]]) -> None:
    groups = 2 + 1  # one per block, one for the root
    for res in fsdp_run:
        assert res["fsdp2"]["scatters"] == [0, groups] * FSDP_STEPS


# -- 3. DiLoCo ------------------------------------------------------------------------------

H, DILOCO_STEPS = 3, 9


def _diloco_worker(rank: int, world: int, ckpt_dir: str) -> dict[str, Any]:
    comm.install()
    task = _task()
    info = _info(rank, world)
    cfg = _cfg(strategy="diloco", diloco_h=H, outer_lr=0.7, outer_momentum=0.9)
    strategy = DiLoCoStrategy(cfg, info)
    torch.manual_seed(100 + rank)  # different inits: wrap must start every rank from rank 0's
    model = strategy.wrap(task.build_model())
    out: dict[str, Any] = {"start": _flat(model), "numel": sum(p.numel() for p in model.parameters())}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    held_out = _global_batch(task, 40)
    with torch.no_grad():
        out["loss_before"] = float(task.loss(model, held_out)[0])
    out["comm"], out["after"] = [], []
    for step in range(1, DILOCO_STEPS + 1):
        before = comm.stats()
        batch = _shard(_global_batch(task, step), rank, world)  # different data on each rank
        task.loss(model, batch)[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        strategy.after_step(model, step)
        out["comm"].append({op: (c.calls, c.bytes) for op, c in comm.since(before).items()})
        out["after"].append(_flat(model))
    with torch.no_grad():
        out["loss_after"] = float(task.loss(model, held_out)[0])

    # State round trip, directly and through DCP into a fresh strategy's template (as on resume).
    saved = strategy.state_dict()
    out["saved"] = saved
    fresh = DiLoCoStrategy(cfg, info)
    fresh_model = fresh.wrap(task.build_model())
    out["fresh_momentum_norm"] = float(fresh.state_dict()["momentum"].norm())
    dcp.save({"strategy": saved}, checkpoint_id=ckpt_dir)
    template = {"strategy": fresh.state_dict()}
    dcp.load(template, checkpoint_id=ckpt_dir)
    fresh.load_state_dict(template["strategy"])
    out["restored"] = fresh.state_dict()
    # One more sync from identical local parameters must agree exactly.
    with torch.no_grad():
        for p, q in zip(fresh_model.parameters(), model.parameters(), strict=True):
            p.copy_(q + 0.01)
            q.add_(0.01)
    strategy.after_step(model, H)
    fresh.after_step(fresh_model, H)
    out["continued"] = (_flat(model), _flat(fresh_model), strategy.state_dict(), fresh.state_dict())

    # outer_lr=1, outer_momentum=0: one sync is plain averaging of the local models.
    avg = DiLoCoStrategy(_cfg(strategy="diloco", diloco_h=2, outer_lr=1.0, outer_momentum=0.0), info)
    torch.manual_seed(0)
    avg_model = avg.wrap(task.build_model())
    avg_opt = torch.optim.SGD(avg_model.parameters(), lr=0.5)
    for step in (1, 2):
        task.loss(avg_model, _shard(_global_batch(task, step), rank, world))[0].backward()
        avg_opt.step()
        avg_opt.zero_grad(set_to_none=True)
        if step == 2:
            out["local"] = _flat(avg_model)
        avg.after_step(avg_model, step)
    out["averaged"] = _flat(avg_model)
    return out


@pytest.fixture(scope="module")
def diloco_run(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_distributed(_diloco_worker, WORLD, str(tmp_path_factory.mktemp("diloco-dcp")))


def test_diloco_starts_from_rank0(diloco_run: list[dict[str, Any]]) -> None:
    assert torch.equal(diloco_run[0]["start"], diloco_run[1]["start"])


def test_diloco_communicates_one_flat_all_reduce_every_h_steps(diloco_run: list[dict[str, Any]]) -> None:
    for res in diloco_run:
        flat_bytes = res["numel"] * 4
        for step, counts in enumerate(res["comm"], start=1):
            expected = {"all_reduce": (1, flat_bytes)} if step % H == 0 else {}
            assert counts == expected, f"step {step}"


def test_diloco_sync_makes_ranks_identical(diloco_run: list[dict[str, Any]]) -> None:
    r0, r1 = (res["after"] for res in diloco_run)
    for step in range(1, DILOCO_STEPS + 1):
        same = torch.equal(r0[step - 1], r1[step - 1])
        assert same == (step % H == 0), f"step {step}: ranks {'differ' if not same else 'agree'} unexpectedly"


def test_diloco_plain_average(diloco_run: list[dict[str, Any]]) -> None:
    local = [res["local"].double() for res in diloco_run]
    assert not torch.equal(local[0], local[1])
    mean = ((local[0] + local[1]) / 2).float()
    for res in diloco_run:
        torch.testing.assert_close(res["averaged"], mean, atol=2e-7, rtol=0)


def test_diloco_loss_decreases(diloco_run: list[dict[str, Any]]) -> None:
    for res in diloco_run:
        assert res["loss_after"] < res["loss_before"] - 0.5


def test_diloco_state_dict_round_trip(diloco_run: list[dict[str, Any]]) -> None:
    for res in diloco_run:
        saved, restored = res["saved"], res["restored"]
        assert saved["momentum"].norm() > 0 and res["fresh_momentum_norm"] == 0
        assert saved.keys() == restored.keys()
        for key in saved:
            assert torch.equal(saved[key], restored[key]), key
        model_a, model_b, state_a, state_b = res["continued"]
        assert torch.equal(model_a, model_b)
        for key in state_a:
            assert torch.equal(state_a[key], state_b[key]), key


# -- 4. PowerSGD ----------------------------------------------------------------------------

PSGD_STEPS, WIDTH, RANK = 12, 256, 2


def _psgd_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH))


def _psgd_worker(rank: int, world: int) -> dict[str, Any]:
    comm.install()
    gen = torch.Generator().manual_seed(1)
    teacher = _psgd_model(1)
    xs = [torch.randn(16, WIDTH, generator=gen) for _ in range(2)]
    with torch.no_grad():
        ys = [teacher(x) for x in xs]
    out = {}
    for powersgd in (False, True):
        strategy = DDPStrategy(_cfg(strategy="ddp", powersgd=powersgd, powersgd_rank=RANK), _info(rank, world))
        model = strategy.wrap(_psgd_model(0))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def full_loss(m: nn.Module) -> float:
            with torch.no_grad():
                return sum(float(F.mse_loss(m(x), y)) for x, y in zip(xs, ys, strict=True))

        loss_before = full_loss(model.module)
        per_step = []
        for step in range(PSGD_STEPS):
            x, y = xs[step % 2][rank::world], ys[step % 2][rank::world]
            before = comm.stats()
            F.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            per_step.append({op: (c.calls, c.bytes) for op, c in comm.since(before).items()})
        out["powersgd" if powersgd else "plain"] = {
            "loss": (loss_before, full_loss(model.module)),
            "per_step": per_step,
            "params": _params(model),
        }
    return out


@pytest.fixture(scope="module")
def psgd_run() -> list[dict[str, Any]]:
    return run_distributed(_psgd_worker, WORLD)


def test_powersgd_keeps_ranks_identical_and_learns(psgd_run: list[dict[str, Any]]) -> None:
    _assert_close_dicts(psgd_run[0]["powersgd"]["params"], psgd_run[1]["powersgd"]["params"], atol=0)
    for res in psgd_run:
        before, after = res["powersgd"]["loss"]
        assert after < 0.9 * before, (before, after, res["plain"]["loss"])


def test_powersgd_sends_fewer_bytes_than_ddp(psgd_run: list[dict[str, Any]]) -> None:
    full = 4 * 2 * (WIDTH * WIDTH + WIDTH)
    # After two plain iterations: one all-reduce of the biases, one of P, one of Q (rank 2).
    compressed = 4 * (2 * WIDTH + 2 * (WIDTH * RANK) + 2 * (WIDTH * RANK))
    for res in psgd_run:
        plain, psgd = res["plain"]["per_step"], res["powersgd"]["per_step"]
        assert plain == [{"all_reduce": (1, full)}] * PSGD_STEPS
        assert psgd == [{"all_reduce": (1, full)}] * 2 + [{"all_reduce": (3, compressed)}] * (PSGD_STEPS - 2)
        plain_total = sum(s["all_reduce"][1] for s in plain)
        psgd_total = sum(s["all_reduce"][1] for s in psgd)
        assert psgd_total < plain_total / 3


# -- 5. The Trainer end to end ----------------------------------------------------------------

TRAINER_STEPS = 10
TRAINER_RUNS = {
    "ddp": {"strategy": "ddp"},
    "fsdp2": {"strategy": "fsdp2"},
    "diloco": {"strategy": "diloco", "diloco_h": 5},
    "ddp+powersgd": {"strategy": "ddp", "powersgd": True},
}


def _trainer_worker(rank: int, world: int, root: str, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from kelm.train.trainer import Trainer

    results = {}
    for name, overrides in runs.items():
        cfg = _cfg(
            batch_size=GLOBAL_BATCH,
            max_steps=TRAINER_STEPS,
            log_every=1,
            lr=3e-3,
            checkpoint_every=5,
            **overrides,
        )
        trainer = Trainer(_task(), cfg, Path(root) / name)
        summary = trainer.fit()
        results[name] = {
            "losses": [h["loss"] for h in trainer.state.history],
            "params": _params(trainer.strategy.unwrap(trainer.model)),
            "summary": summary,
        }
        if name == "diloco":
            # Resume from the mid-run checkpoint (after one sync, so the outer momentum is set).
            midway = Path(root) / name / "checkpoints" / f"step_{TRAINER_STEPS // 2:08d}"
            resumed = Trainer(_task(), cfg, Path(root) / f"{name}-resumed", resume=midway)
            resumed.fit()
            results[f"{name}-resumed"] = {"params": _params(resumed.strategy.unwrap(resumed.model))}
    dist.barrier()
    return results


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
    root = tmp_path_factory.mktemp("trainer")
    multi = run_distributed(_trainer_worker, WORLD, str(root), TRAINER_RUNS)
    (single_root := root / "single-process").mkdir()  # its own folder: a retry empties only it
    (single,) = run_distributed(_trainer_worker, 1, str(single_root), {"single": {"strategy": "single"}})
    return root, multi, single


@pytest.mark.parametrize("name", list(TRAINER_RUNS))
def test_trainer_end_to_end(name: str, trainer_runs: tuple[Path, list[dict[str, Any]], dict[str, Any]]) -> None:
    root, multi, _ = trainer_runs
    r0, r1 = multi[0][name], multi[1][name]
    assert len(r0["losses"]) == TRAINER_STEPS and all(math.isfinite(x) for x in r0["losses"])
    assert r0["losses"] == r1["losses"]  # logged values are all-reduced
    assert r0["losses"][-1] < r0["losses"][0]
    ckpts = root / name / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == f"step_{TRAINER_STEPS:08d}"
    assert (ckpts / f"step_{TRAINER_STEPS:08d}" / ".metadata").is_file()
    assert (ckpts / f"step_{TRAINER_STEPS // 2:08d}" / ".metadata").is_file()
    assert (root / name / "model" / "model.safetensors").is_file()
    _assert_close_dicts(r0["params"], r1["params"], atol=0)
    assert r0["summary"]["steps"] == TRAINER_STEPS and r0["summary"]["bytes_communicated"] > 0


@pytest.mark.parametrize("name", ["diloco"])
def test_trainer_resume_with_per_rank_state_continues_exactly(
    name: str, trainer_runs: tuple[Path, list[dict[str, Any]], dict[str, Any]]
) -> None:
    _, multi, _ = trainer_runs
    for res in multi:
        _assert_close_dicts(res[f"{name}-resumed"]["params"], res[name]["params"], atol=0)


def test_trainer_ddp_losses_equal_single_process(
    trainer_runs: tuple[Path, list[dict[str, Any]], dict[str, Any]],
) -> None:
    _, multi, single = trainer_runs
    reference = torch.tensor(single["single"]["losses"], dtype=torch.float64)
    assert len(reference) == TRAINER_STEPS
    for name in ("ddp", "fsdp2"):
        losses = torch.tensor(multi[0][name]["losses"], dtype=torch.float64)
        torch.testing.assert_close(losses, reference, atol=1e-5, rtol=0)
    _assert_close_dicts(multi[0]["ddp"]["params"], single["single"]["params"], atol=1e-5)


# -- configuration errors -------------------------------------------------------------------


def test_build_strategy_rejects_mismatched_settings() -> None:
    assert type(build_strategy(_cfg(strategy="single"), _info(0, 1))) is Strategy
    with pytest.raises(ConfigError, match="one process"):
        build_strategy(_cfg(strategy="single"), _info(0, 2))
    with pytest.raises(ConfigError, match="powersgd"):
        build_strategy(_cfg(strategy="fsdp2", powersgd=True), _info(0, 2))


UNEVEN_CORPUS = CORPUS[:1600]  # 9 validation windows: 5 on rank 0 and 4 on rank 1


def _uneven_worker(rank: int, world: int, root: str) -> dict[str, Any]:
    from kelm.train.trainer import Trainer

    task = CausalLMTask(CausalLMConfig(seq_len=16, d_model=32, n_layer=2, n_head=2), corpus=UNEVEN_CORPUS)
    assert len(task.eval_data()) == 9
    out = {}
    for name, overrides in {
        "fsdp2": {"strategy": "fsdp2"},
        "diloco": {"strategy": "diloco", "diloco_h": 5},
    }.items():
        cfg = _cfg(batch_size=GLOBAL_BATCH, max_steps=7, eval_batch_size=4, lr=3e-3, **overrides)
        trainer = Trainer(task, cfg, Path(root) / name)
        summary = trainer.fit()
        out[name] = {"valid": summary["valid"], "params": _params(trainer.strategy.unwrap(trainer.model))}
    return out


def test_uneven_eval_shares_and_unsynced_diloco_end_cleanly(tmp_path: Path) -> None:
    """FSDP2 must not hang when ranks hold different numbers of eval samples, and a DiLoCo run
    that stops between syncs (7 steps, H=5) syncs once more so every rank exports the same model."""
    r0, r1 = run_distributed(_uneven_worker, WORLD, str(tmp_path), timeout=240)
    for name in ("fsdp2", "diloco"):
        assert math.isfinite(r0[name]["valid"]["loss"])
        assert r0[name]["valid"] == r1[name]["valid"]
        _assert_close_dicts(r0[name]["params"], r1[name]["params"], atol=0)
