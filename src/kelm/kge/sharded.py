"""An entity table sharded row-wise over the ranks of the job, looked up through ``all_to_all``.

Rank ``r`` of ``N`` holds rows ``[r*c, (r+1)*c)`` of ``E`` with ``c = ceil(E / N)`` (`torch.chunk`
layout, the layout of a DTensor ``Shard(0)``), and only those rows are ever allocated: the table is
initialised block by block from the full table's random stream (`ShardedEmbedding.reset_rows`), so
it starts with exactly the rows one process would draw.

A lookup sends each distinct id to the rank that owns it and gets the row back (three
``all_to_all_single`` exchanges: counts, ids, rows; gloo on CPU, NCCL on GPUs). The backward pass
is the reverse row exchange, and the owner adds the gradients into its own rows, so every rank's
gradient holds the contributions of every rank's batch. Scoring every entity (evaluation) gathers
the queries of all ranks, scores them against the local rows and sends each rank its queries'
scores (`ShardedEmbedding.score_all`). Every lookup is collective: all ranks must make the same
calls in the same order.

`attach` joins the table to a 1-D device mesh (`kelm.kge.plan.ShardedEntityPlan` calls it): its
state dict then holds one DTensor of the global shape, so DCP checkpoints save each row once and
reshard to any world size, and a full state dict (the exported model) gathers the whole table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard

#: Rows drawn at a time when initialising a shard from the full table's random stream (a multiple
#: of 16: torch's CPU ``normal_`` draws in blocks of 16 values, see `init_blocks`).
INIT_BLOCK_ROWS = 16 * 1024


@dataclass(frozen=True)
class RowShards:
    """Which rows of a ``num_rows`` table rank ``rank`` of ``world`` holds (`torch.chunk` layout)."""

    num_rows: int
    world: int = 1
    rank: int = 0

    @classmethod
    def of_job(cls, num_rows: int) -> RowShards:
        """This process's share of the table in the running job (the whole table without one)."""
        if not dist.is_available() or not dist.is_initialized():
            return cls(num_rows)
        return cls(num_rows, dist.get_world_size(), dist.get_rank())

    @property
    def chunk(self) -> int:
        """Rows per rank (the last ranks may hold fewer, or none)."""
        return max(1, -(-self.num_rows // self.world))

    def bounds(self, rank: int) -> tuple[int, int]:
        start = min(rank * self.chunk, self.num_rows)
        return start, min(start + self.chunk, self.num_rows)

    @property
    def start(self) -> int:
        return self.bounds(self.rank)[0]

    @property
    def stop(self) -> int:
        return self.bounds(self.rank)[1]

    @property
    def local_rows(self) -> int:
        return self.stop - self.start

    def sizes(self) -> list[int]:
        """Rows held by each rank."""
        return [hi - lo for lo, hi in map(self.bounds, range(self.world))]


def init_blocks(num_rows: int, dim: int, block_rows: int = INIT_BLOCK_ROWS) -> Iterator[tuple[int, int]]:
    """Row ranges ``[lo, hi)`` whose in-place initialisations, in order, draw the same values as one
    initialisation of the whole ``(num_rows, dim)`` table. torch's CPU ``normal_`` draws 16 values at
    a time and redraws the last 16 of a tensor whose size is not a multiple of 16, so every block
    but the last holds a multiple of 16 rows, and a last block under 16 values joins the one before."""
    if block_rows % 16:
        raise ValueError(f"block_rows must be a multiple of 16, got {block_rows}")
    lo = 0
    while lo < num_rows:
        hi = min(num_rows, lo + block_rows)
        if 0 < (num_rows - hi) * dim < 16:
            hi = num_rows
        yield lo, hi
        lo = hi


class _RowExchange(torch.autograd.Function):
    """Serve the rows others asked for and receive the rows asked of others; backward sends the
    gradients of the received rows back to their owners, who add them into their shard."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, weight: Tensor, served: Tensor, asked: list[int], answered: list[int], group: Any
    ) -> Tensor:
        ctx.save_for_backward(served)
        ctx.shape, ctx.asked, ctx.answered, ctx.group = weight.shape, asked, answered, group
        rows = weight.new_empty(sum(asked), weight.shape[1])
        dist.all_to_all_single(rows, weight[served], asked, answered, group=group)
        return rows

    @staticmethod
    def backward(ctx: Any, grad_rows: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (served,) = ctx.saved_tensors
        grad_served = grad_rows.new_empty(len(served), ctx.shape[1])
        dist.all_to_all_single(grad_served, grad_rows.contiguous(), ctx.answered, ctx.asked, group=ctx.group)
        grad = grad_rows.new_zeros(ctx.shape).index_add_(0, served, grad_served)
        return grad, None, None, None, None


def _exchange_sizes(counts: Tensor, group: Any) -> Tensor:
    """``counts[k]`` sent to rank ``k`` → what every rank sends here."""
    received = torch.empty_like(counts)
    dist.all_to_all_single(received, counts, group=group)
    return received


def sharded_lookup(weight: Tensor, ids: Tensor, shards: RowShards, group: Any) -> Tensor:
    """Rows ``ids`` (any shape, global ids) of the table whose local shard is ``weight``. Collective."""
    unique, inverse = torch.unique(ids.reshape(-1), sorted=True, return_inverse=True)
    owner = torch.div(unique, shards.chunk, rounding_mode="floor")  # sorted ids: grouped by owner
    asked = torch.bincount(owner, minlength=shards.world)
    answered = _exchange_sizes(asked, group)
    wanted = unique.new_empty(int(answered.sum()))
    asked_list, answered_list = asked.tolist(), answered.tolist()
    dist.all_to_all_single(wanted, unique, answered_list, asked_list, group=group)
    rows = _RowExchange.apply(weight, wanted - shards.start, asked_list, answered_list, group)
    return rows[inverse].view(*ids.shape, weight.shape[1])


def _gather_rows(x: Tensor, sizes: list[int], group: Any) -> Tensor:
    """Every rank's ``x`` (``sizes[k]`` rows on rank ``k``), concatenated in rank order."""
    width = max(sizes)
    padded = x.new_zeros(width, *x.shape[1:])
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


class ShardedEmbedding(nn.Module):
    """An ``nn.Embedding``-like table of ``shards.num_rows`` rows of which this rank holds its share
    (``weight``: ``(shards.local_rows, dim)``); ``forward`` takes global ids. Like ``nn.Embedding``
    it starts N(0, 1), drawing the whole table's values from the global random stream."""

    def __init__(self, shards: RowShards, dim: int, device: torch.device | str | None = None):
        super().__init__()
        self.shards, self.embedding_dim, self.num_embeddings = shards, dim, shards.num_rows
        self.weight = nn.Parameter(torch.empty(shards.local_rows, dim, device=device))
        self.weight.kelm_global_shape = (shards.num_rows, dim)  # type: ignore[attr-defined]
        self.mesh: DeviceMesh | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.reset_rows(nn.init.normal_)

    @property
    def group(self) -> Any:
        if self.mesh is None:
            raise RuntimeError("the sharded table is not attached to its ranks (ShardedEmbedding.attach)")
        return self.mesh.get_group()

    @torch.no_grad()
    def reset_rows(self, init: Callable[[Tensor], Any], block_rows: int = INIT_BLOCK_ROWS) -> None:
        """Fill the local rows with what ``init(full_table)`` gives them: the full table's values are
        drawn block by block (the random stream advances as for the whole table), the rest dropped."""
        dim, (start, stop) = self.embedding_dim, (self.shards.start, self.shards.stop)
        scratch = self.weight.new_empty(block_rows + 16, dim)
        for lo, hi in init_blocks(self.num_embeddings, dim, block_rows):
            block = scratch[: hi - lo]
            init(block)
            a, b = max(lo, start), min(hi, stop)
            if a < b:
                self.weight[a - start : b - start] = block[a - lo : b - lo]

    def attach(self, mesh: DeviceMesh) -> None:
        """Join the table to its ranks: lookups exchange rows over ``mesh`` and the state dict holds
        a DTensor sharded over it (a full ``(E, dim)`` tensor loads too: this rank's rows are kept)."""
        if mesh.size() != self.shards.world or mesh.get_local_rank() != self.shards.rank:
            raise ValueError(f"mesh of {mesh.size()} ranks does not match the table's {self.shards}")
        self.mesh = mesh
        self._register_state_dict_hook(_save_as_dtensor)
        self._register_load_state_dict_pre_hook(_load_local_rows, with_module=True)

    def as_dtensor(self, local: Tensor) -> DTensor:
        """``local`` rows (the weight, or per-row optimizer state) as the global DTensor."""
        assert self.mesh is not None
        shape = (self.num_embeddings, *local.shape[1:])
        stride = torch.empty(0, *local.shape[1:]).stride() if local.dim() > 1 else (1,)
        return DTensor.from_local(local, self.mesh, [Shard(0)], run_check=False, shape=shape, stride=stride)

    def forward(self, ids: Tensor) -> Tensor:
        if self.shards.world == 1:
            return F.embedding(ids, self.weight)
        return sharded_lookup(self.weight, ids, self.shards, self.group)

    def score_all(self, fn: Callable[..., Tensor], *queries: Tensor) -> Tensor:
        """``fn(*queries, table)`` ``(B, E)`` against every entity: each rank scores all ranks'
        queries against its rows, then receives its own queries' scores from every rank. Collective;
        not differentiable (evaluation)."""
        if self.shards.world == 1:
            return fn(*queries, self.weight)
        if torch.is_grad_enabled() and self.weight.requires_grad:
            raise RuntimeError("scoring every entity of a sharded table is not differentiable")
        group, n = self.group, len(queries[0])
        count = torch.tensor([n], device=queries[0].device)
        sizes = [int(s) for s in _gather_rows(count, [1] * self.shards.world, group)]
        local = fn(*(_gather_rows(q, sizes, group) for q in queries), self.weight).contiguous()
        widths = self.shards.sizes()
        out = local.new_empty(n * sum(widths))
        send = [s * local.shape[1] for s in sizes]
        dist.all_to_all_single(out, local.reshape(-1), [n * w for w in widths], send, group=group)
        blocks = out.split([n * w for w in widths])
        return torch.cat([b.view(n, w) for b, w in zip(blocks, widths, strict=True)], dim=1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rows {self.shards.start}:{self.shards.stop}"


def _save_as_dtensor(module: ShardedEmbedding, state: dict[str, Any], prefix: str, _meta: Any) -> None:
    value = state.get(prefix + "weight")
    if isinstance(value, Tensor) and not isinstance(value, DTensor):
        state[prefix + "weight"] = module.as_dtensor(value)


def _load_local_rows(module: ShardedEmbedding, state: dict[str, Any], prefix: str, *_: Any) -> None:
    value = state.get(prefix + "weight")
    if isinstance(value, DTensor):
        state[prefix + "weight"] = value.to_local()
    elif isinstance(value, Tensor) and value.shape[0] == module.num_embeddings != module.shards.local_rows:
        state[prefix + "weight"] = value[module.shards.start : module.shards.stop]


_SHARDS: ContextVar[RowShards | None] = ContextVar("kelm_entity_shards", default=None)


@contextlib.contextmanager
def entity_shards(shards: RowShards | None) -> Iterator[None]:
    """Within the block, `entity_table` builds ``shards``' rows of a sharded table (None, or one
    rank: a plain ``nn.Embedding``)."""
    token = _SHARDS.set(shards if shards is not None and shards.world > 1 else None)
    try:
        yield
    finally:
        _SHARDS.reset(token)


def entity_table(num_entities: int, dim: int) -> nn.Embedding | ShardedEmbedding:
    """A model's entity table: ``nn.Embedding``, or this rank's rows inside `entity_shards`."""
    shards = _SHARDS.get()
    if shards is None:
        return nn.Embedding(num_entities, dim)
    if shards.num_rows != num_entities:
        raise ValueError(f"the table has {num_entities} entities, the shards {shards.num_rows}")
    return ShardedEmbedding(shards, dim)


def pad_to_longest(rows: Tensor) -> tuple[Tensor, Tensor]:
    """``rows`` padded (with copies of its first row, or zeros) to the longest of all ranks' row
    counts, and the mask of the real rows: every rank then makes as many collective lookups."""
    longest = torch.tensor([len(rows)], device=rows.device)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    extra = int(longest) - len(rows)
    filler = rows[:1] if len(rows) else rows.new_zeros(1, *rows.shape[1:])
    padded = torch.cat([rows, filler.expand(extra, *rows.shape[1:])]) if extra else rows
    return padded, torch.arange(len(padded), device=rows.device) < len(rows)


def sharded_tables(model: nn.Module) -> list[ShardedEmbedding]:
    """The sharded tables of ``model`` that span more than one rank."""
    return [m for m in model.modules() if isinstance(m, ShardedEmbedding) and m.shards.world > 1]


__all__ = [
    "INIT_BLOCK_ROWS",
    "RowShards",
    "ShardedEmbedding",
    "entity_shards",
    "entity_table",
    "init_blocks",
    "pad_to_longest",
    "sharded_lookup",
    "sharded_tables",
]
