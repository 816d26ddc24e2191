"""Entity tables sharded row-wise over ranks (`kelm.kge.sharded`, `kelm.kge.plan`), on gloo.

Two processes holding half of the table each train step for step as one process holding all of it
(parameters within 1e-5 after every step, the filtered ranks equal); each holds about half of the
table and of its optimizer state; the table starts as one process's would; lookups, their
gradients and all-entity scores match a plain ``nn.Embedding``. Small graphs: the bundled UMLS
(135 entities, an uneven split) with dim 8, one thread per process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from distributed_harness import run_distributed
from torch import nn

from kelm.errors import ConfigError
from kelm.kge.memory import check_tables_fit
from kelm.kge.plan import ShardedEntityPlan
from kelm.kge.sharded import RowShards, ShardedEmbedding, init_blocks
from kelm.tasks.link_prediction import LinkPredictionConfig, LinkPredictionTask
from kelm.train.callbacks import TrainerCallback
from kelm.train.config import TrainConfig
from kelm.train.distributed import DistInfo, shutdown
from kelm.train.trainer import Trainer

STEPS = 4


def test_row_shards_follow_torch_chunk() -> None:
    for rows, world in ((135, 2), (10, 4), (3, 4), (64, 8)):
        sizes = [RowShards(rows, world, r).local_rows for r in range(world)]
        chunks = [len(c) for c in torch.arange(rows).chunk(world)]  # DTensor's Shard(0) layout
        assert sizes == chunks + [0] * (world - len(chunks))


@pytest.mark.parametrize(("rows", "dim"), [(1000, 7), (3000, 1), (37, 3), (33, 16)])
def test_blocks_draw_the_whole_table(rows: int, dim: int) -> None:
    """Initialising block by block draws the same values as initialising the whole table."""
    for init in (lambda t: nn.init.normal_(t, std=0.3), lambda t: nn.init.uniform_(t, -1, 1)):
        torch.manual_seed(3)
        whole = init(torch.empty(rows, dim))
        torch.manual_seed(3)
        parts = [init(torch.empty(hi - lo, dim)) for lo, hi in init_blocks(rows, dim, block_rows=32)]
        assert torch.equal(torch.cat(parts), whole)
        torch.manual_seed(3)
        shards = [ShardedEmbedding(RowShards(rows, 3, r), dim) for r in range(3)]
        assert all(len(s.weight) == RowShards(rows, 3, r).local_rows for r, s in enumerate(shards))


def test_a_sharded_table_needs_its_share_of_memory() -> None:
    whole = check_tables_fit((1000, 10), 0, "adam")
    assert whole == 1000 * 10 * 4 * 4  # weights, gradient, two moments
    assert check_tables_fit((1000, 10), 0, "adam", shards=2) == whole // 2


def _exchange(rank: int, world: int) -> dict[str, Any]:
    """A sharded lookup, its gradient and all-entity scores, against the whole table."""
    from torch.distributed.device_mesh import init_device_mesh

    E, D = 11, 3
    full = torch.randn(E, D, generator=torch.Generator().manual_seed(0))
    table = ShardedEmbedding(RowShards(E, world, rank), D)
    table.attach(init_device_mesh("cpu", (world,)))
    with torch.no_grad():
        table.weight.copy_(full[table.shards.start : table.shards.stop])
    ids = torch.tensor([[0, 10, 3], [3, 3, 7]]) if rank == 0 else torch.tensor([[5], [10]])
    rows = table(ids)
    (rows * (rank + 1)).sum().backward()
    queries = torch.randn(len(ids), D, generator=torch.Generator().manual_seed(rank))
    with torch.no_grad():
        scores = table.score_all(lambda q, t: q @ t.T, queries)
    return {"rows": rows.detach(), "ids": ids, "grad": table.weight.grad, "scores": scores, "queries": queries}


class _Record(TrainerCallback):
    """The whole entity and relation tables after every step (gathered from the shards)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_step_end(self, trainer: Any, step: int) -> None:
        kge = trainer.strategy.unwrap(trainer.model).kge
        entity = kge.entity.weight.detach()
        if isinstance(kge.entity, ShardedEmbedding) and kge.entity.shards.world > 1:
            entity = kge.entity.as_dtensor(entity).full_tensor()
        self.steps.append({"entity": entity.clone(), "relation": kge.relation.weight.detach().clone()})


def _train(out: Path, task: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """Every step's tables, the test metrics, and the bytes of the entity table and its optimizer state here."""
    lp = LinkPredictionTask(LinkPredictionConfig(**task))
    record = _Record()
    trainer = Trainer(lp, TrainConfig(**train), out, callbacks=[record])
    try:
        summary = trainer.fit()
        table = trainer.strategy.unwrap(trainer.model).kge.entity.weight
        state = trainer.optimizer.state[table].values()
        table_bytes = table.numel() * table.element_size()
        state_bytes = sum(v.numel() * v.element_size() for v in state if v.dim() > 0)
    finally:
        trainer.close()
    return {"steps": record.steps, "test": summary["test"], "table": table_bytes, "state": state_bytes}


TASK = {"dataset": "umls", "model": "complex", "dim": 8, "training": "negative-sampling", "num_negatives": 16}
TRAIN = {"strategy": "ddp", "threads": 1, "batch_size": 64, "max_steps": STEPS, "lr": 0.05, "tensorboard": False}
CASES = {
    "complex-adam": (TASK, TRAIN | {"optimizer": "adam"}),  # reciprocal relations: every row a tail query
    "rotate-adagrad-both-sides": (
        TASK | {"reciprocal": False, "sampler": "bernoulli", "model": "rotate"},
        TRAIN | {"optimizer": "adagrad"},
    ),
}


def _sharded(rank: int, world: int, out: str) -> dict[str, Any]:
    """In one pair of processes: the exchange, then every case trained with a sharded table."""
    runs = {
        name: _train(Path(out) / name, task | {"shard_entities": True}, train) for name, (task, train) in CASES.items()
    }
    return {"exchange": _exchange(rank, world), **runs}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_distributed(_sharded, 2, str(tmp_path_factory.mktemp("two")), timeout=300)


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case in this process, one unsharded table."""
    out = tmp_path_factory.mktemp("one")
    try:
        return {name: _train(out / name, task, train) for name, (task, train) in CASES.items()}
    finally:
        shutdown()


def test_lookup_gradient_and_scores_match_the_whole_table(sharded: list[dict[str, Any]]) -> None:
    E, D = 11, 3
    full = torch.randn(E, D, generator=torch.Generator().manual_seed(0))
    ranks = [r["exchange"] for r in sharded]
    grad = torch.zeros(E, D)
    for rank, out in enumerate(ranks):
        assert torch.equal(out["rows"], full[out["ids"]])
        grad.index_add_(0, out["ids"].reshape(-1), torch.full((out["ids"].numel(), D), rank + 1.0))
        assert torch.allclose(out["scores"], out["queries"] @ full.T, atol=1e-6)
    assert torch.equal(torch.cat([out["grad"] for out in ranks]), grad)


@pytest.mark.parametrize("case", CASES)
def test_two_shards_train_as_one_table(whole: dict[str, Any], sharded: list[dict[str, Any]], case: str) -> None:
    """2 sharded processes = 1 unsharded process after every step, and the filtered test ranks agree."""
    one, two = whole[case], [r[case] for r in sharded]
    assert len(one["steps"]) == len(two[0]["steps"]) == STEPS
    assert not torch.equal(one["steps"][0]["entity"], one["steps"][-1]["entity"])  # the steps move the table
    for step, (a, b) in enumerate(zip(one["steps"], two[0]["steps"], strict=True)):
        for name in ("entity", "relation"):
            assert (a[name] - b[name]).abs().max() < 1e-5, (step, name)
    for metric, value in one["test"].items():
        assert two[0]["test"][metric] == pytest.approx(value, abs=1e-4), metric


@pytest.mark.parametrize("case", CASES)
def test_each_rank_holds_half_the_table_and_its_state(
    whole: dict[str, Any], sharded: list[dict[str, Any]], case: str
) -> None:
    one, two = whole[case], [r[case] for r in sharded]
    assert one["table"] == 135 * 8 * 4
    assert [r["table"] for r in two] == [68 * 8 * 4, 67 * 8 * 4]  # rows 0-67 and 68-134
    assert one["state"] > 0 and sum(r["state"] for r in two) == one["state"]
    assert max(r["state"] for r in two) <= 0.51 * one["state"]


def test_sharding_asks_for_negative_sampling_and_ddp() -> None:
    with pytest.raises(ValueError, match="shard_entities trains with training = 'negative-sampling', not '1-n'"):
        LinkPredictionConfig(**(TASK | {"training": "1-n", "shard_entities": True}))
    with pytest.raises(ValueError, match="init_from .* does not combine with shard_entities"):
        LinkPredictionConfig(**(TASK | {"init_from": "runs/old", "shard_entities": True}))
    model = nn.ModuleDict({"entity": ShardedEmbedding(RowShards(10, 2, 0), 3)})
    info = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    for strategy in ("fsdp2", "diloco"):
        with pytest.raises(ConfigError, match=f"task.shard_entities runs with strategy 'ddp', not '{strategy}'"):
            ShardedEntityPlan().apply(model, strategy, info)
