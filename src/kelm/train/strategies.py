"""Parallelism strategies, applied from outside the model.

A strategy wraps the model, decides when gradients are synchronised, and may act after each
optimizer step (DiLoCo's outer step). The Trainer calls the same methods for every strategy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kelm.errors import ConfigError
from kelm.registry import Registry
from kelm.train.config import TrainConfig
from kelm.train.distributed import DistInfo
from kelm.train.parallel import ParallelPlan


class Strategy:
    """Single process: no wrapping, no communication."""

    name = "single"
    #: True when every rank must run each forward pass together (sharded parameters).
    collective_forward = False

    def __init__(self, cfg: TrainConfig, info: DistInfo, plan: ParallelPlan | None = None):
        self.cfg, self.info = cfg, info
        self.plan = plan or ParallelPlan()
        #: Degree of the model's own sharding (`ParallelPlan.apply`; 1: none).
        self.model_parallel = 1

    def wrap(self, model: nn.Module) -> nn.Module:
        self.model_parallel = self.plan.apply(model, self.name, self.info)
        if self.cfg.activation_checkpointing:
            apply_activation_checkpointing(model, self.plan)
        return model

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model

    def prepare_optimizer(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Hook once the optimizer exists (the model's own sharded parameters may need it)."""
        if self.model_parallel > 1:
            self.plan.prepare_optimizer(self.unwrap(model), optimizer)

    def grad_norm(self, model: nn.Module) -> torch.Tensor:
        """The norm of the whole model's gradient (parameters the model shards count once each)."""
        if self.model_parallel > 1:
            return self.plan.grad_norm(self.unwrap(model))
        return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])

    @contextlib.contextmanager
    def sync(self, model: nn.Module, last_micro_batch: bool) -> Iterator[None]:
        """Context for one micro-batch's forward pass; gradients are synchronised on the last
        micro-batch only. The backward pass may run inside or after the block."""
        yield

    def after_step(self, model: nn.Module, step: int) -> None:
        """Hook after each optimizer step."""

    def finish(self, model: nn.Module, step: int) -> bool:
        """Hook once training ends, before the final evaluation and export; True if it changed the model."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """State that is the same on every rank (saved once)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def local_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """State that differs by rank (saved per rank, restored only at the same world size)."""
        return None

    def load_local_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        pass


class DDPStrategy(Strategy):
    """DistributedDataParallel, optionally with the PowerSGD gradient-compression hook.

    PowerSGD's error feedback and warm-start factors live in DDP's flat gradient buckets, whose
    layout DDP rebuilds after the first iteration of every process; they are therefore not
    checkpointed. A resumed PowerSGD run starts compression afresh (two uncompressed steps, zero
    error feedback), so its curve after the resume point is close to, not equal to, an
    uninterrupted run. Plain DDP resumes exactly.
    """

    name = "ddp"

    def wrap(self, model: nn.Module) -> nn.Module:
        model = super().wrap(model)
        ddp = DistributedDataParallel(
            model, device_ids=[self.info.local_rank] if self.info.device.type == "cuda" else None
        )
        if self.cfg.powersgd:
            from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

            self._psgd_state = psgd.PowerSGDState(
                process_group=None,
                matrix_approximation_rank=self.cfg.powersgd_rank,
                start_powerSGD_iter=2,
                use_error_feedback=True,
                warm_start=True,
                random_seed=self.cfg.seed,
            )
            ddp.register_comm_hook(self._psgd_state, psgd.powerSGD_hook)
        else:
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            ddp.register_comm_hook(None, default_hooks.allreduce_hook)
        return ddp

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model

    @contextlib.contextmanager
    def sync(self, model: nn.Module, last_micro_batch: bool) -> Iterator[None]:
        if last_micro_batch or not isinstance(model, DistributedDataParallel):
            yield
        else:
            with model.no_sync():
                yield


class FSDP2Strategy(Strategy):
    """``fully_shard`` on each repeated block, then on the root (parameters become DTensors)."""

    name = "fsdp2"
    collective_forward = True

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self.plan.apply(model, self.name, self.info)
        if self.cfg.activation_checkpointing:
            apply_activation_checkpointing(model, self.plan)
        mesh = init_device_mesh(self.info.device.type, (self.info.world_size,))
        for unit in self.plan.units(model):
            fully_shard(unit, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    @contextlib.contextmanager
    def sync(self, model: nn.Module, last_micro_batch: bool) -> Iterator[None]:
        # The flag holds until the next call, so the backward pass may run after the block.
        setter = getattr(model, "set_requires_gradient_sync", None)
        if setter is not None:
            setter(last_micro_batch)
        yield


class DiLoCoStrategy(Strategy):
    """Local SGD / DiLoCo: each rank steps its inner optimizer alone; every H steps the ranks
    average the pseudo-gradient (global − local parameters) in one flat all-reduce and apply an
    outer Nesterov SGD step to the shared global parameters, which then replace every rank's
    local ones. Communication happens only then (and once in `wrap`, to start from rank 0's
    parameters). With ``outer_lr=1`` and ``outer_momentum=0`` a sync is plain averaging."""

    name = "diloco"

    def wrap(self, model: nn.Module) -> nn.Module:
        model = super().wrap(model)
        params = list(model.parameters())
        with torch.no_grad():
            flat = _flatten(params)
            dist.broadcast(flat, src=0)
            _unflatten_into(flat, params)
        self._global = flat
        # Zero-initialised momentum gives the same first step as SGD's lazily created buffer,
        # and a state_dict whose structure does not depend on whether a sync has happened yet.
        self._momentum = torch.zeros_like(flat)
        # What compression dropped at the last sync, added back at the next (error feedback).
        self._residual = torch.zeros_like(flat)
        return model

    def after_step(self, model: nn.Module, step: int) -> None:
        if step % self.cfg.diloco_h == 0:
            self._sync(model)

    def finish(self, model: nn.Module, step: int) -> bool:
        """A last sync when training stops between syncs, so every rank ends with the same model."""
        if step % self.cfg.diloco_h == 0:
            return False
        self._sync(model)
        return True

    @torch.no_grad()
    def _sync(self, model: nn.Module) -> None:
        params = list(model.parameters())
        delta = self._global - _flatten(params)
        delta = self._average(delta)
        mu = self.cfg.outer_momentum
        self._momentum.mul_(mu).add_(delta)
        update = delta.add_(self._momentum, alpha=mu) if mu else delta
        self._global.sub_(update, alpha=self.cfg.outer_lr)
        _unflatten_into(self._global, params)

    def _average(self, delta: torch.Tensor) -> torch.Tensor:
        """Mean pseudo-gradient over ranks, sent as fp32, bf16 or blockwise int8 (with error feedback)."""
        world, kind = self.info.world_size, self.cfg.diloco_compression
        if kind == "none":
            dist.all_reduce(delta)
            return delta.div_(world)
        delta += self._residual
        if kind == "bf16":
            sent = delta.to(torch.bfloat16)
            self._residual = delta - sent.float()
            gathered = torch.empty(world * sent.numel(), dtype=sent.dtype)
            dist.all_gather_single(gathered, sent)
            return gathered.float().view(world, -1).mean(0)
        q, scale = quantize_int8(delta)
        self._residual = delta - dequantize_int8(q, scale, delta.numel())
        all_q = torch.empty(world * q.numel(), dtype=torch.int8)
        all_scale = torch.empty(world * scale.numel(), dtype=scale.dtype)
        dist.all_gather_single(all_q, q)
        dist.all_gather_single(all_scale, scale)
        parts = [
            dequantize_int8(qi, si, delta.numel())
            for qi, si in zip(all_q.view(world, -1), all_scale.view(world, -1), strict=True)
        ]
        return torch.stack(parts).mean(0)

    def local_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Replicas drift apart between syncs, so each rank keeps its own model and inner optimizer."""
        if self.info.world_size == 1:
            return None
        return {"model": model.state_dict(), "optim": optimizer.state_dict()}

    def load_local_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "global": self._global.clone(),
            "momentum": self._momentum.clone(),
            "residual": self._residual.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._global.copy_(state["global"])
        self._momentum.copy_(state["momentum"])
        if "residual" in state:
            self._residual.copy_(state["residual"])


INT8_BLOCK = 1024


def quantize_int8(x: torch.Tensor, block: int = INT8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric blockwise int8: each block of ``block`` values shares one fp32 scale (absmax / 127)."""
    n = x.numel()
    padded = torch.nn.functional.pad(x, (0, (-n) % block)).view(-1, block)
    scale = padded.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(padded / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(-1), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, n: int, block: int = INT8_BLOCK) -> torch.Tensor:
    return (q.view(-1, block).float() * scale[:, None]).reshape(-1)[:n]


def _flatten(params: list[nn.Parameter]) -> torch.Tensor:
    """A new 1-D tensor holding all parameters (detached), in order."""
    return torch.cat([p.detach().reshape(-1) for p in params])


def _unflatten_into(flat: torch.Tensor, params: list[nn.Parameter]) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.data.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def apply_activation_checkpointing(model: nn.Module, plan: ParallelPlan) -> None:
    """Recompute each block's activations in the backward pass instead of storing them."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    if not plan.units(model):
        raise ConfigError("activation checkpointing needs a model whose parallel plan names its repeated blocks")
    plan.wrap_units(model, checkpoint_wrapper)


def build_strategy(cfg: TrainConfig, info: DistInfo, plan: ParallelPlan | None = None) -> Strategy:
    name = cfg.strategy
    if name == "single" and info.world_size > 1:
        raise ConfigError(f"strategy 'single' runs one process, but {info.world_size} were launched")
    if cfg.powersgd and name != "ddp":
        raise ConfigError(f"train.powersgd compresses DDP gradients; it does not apply to strategy '{name}'")
    return STRATEGY_CLASSES.get(name, "train.strategy")(cfg, info, plan)


#: Strategy name → class (`kelm.registry` idiom); the names match `kelm.train.config.STRATEGIES`.
STRATEGY_CLASSES: Registry[type[Strategy]] = Registry(
    "strategy",
    {
        "single": "kelm.train.strategies:Strategy",
        "ddp": "kelm.train.strategies:DDPStrategy",
        "fsdp2": "kelm.train.strategies:FSDP2Strategy",
        "diloco": "kelm.train.strategies:DiLoCoStrategy",
    },
)
