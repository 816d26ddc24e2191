"""Expert parallelism: experts sharded over the ranks of a process group, tokens exchanged with
``all_to_all_single`` (variable splits; gloo supports it on CPU, NCCL on GPUs).

Every rank keeps the router and all non-expert parameters; rank ``r`` of an EP group of size
``P`` holds experts ``r*E/P .. (r+1)*E/P - 1``. A forward pass routes the local tokens, sorts them
by global expert, sends each rank the rows for its experts (dispatch), runs the local experts
and sends the outputs back (combine); both exchanges are differentiable (the backward pass is the
reverse exchange).

With DDP the expert parameters are excluded from DDP's all-reduce (``_ddp_params_and_buffers_to_ignore``
on the model): each rank's expert gradient already sums the contributions of every rank's tokens
through the combine exchange. A gradient hook divides it by the data-parallel world size, so it
is the gradient of the mean of the ranks' losses, like DDP's average for the other parameters;
when the EP group is smaller than the world, experts are replicated over ``world / P`` groups and
the hook also sums the replicas' gradients (all-reduce over the ranks holding the same experts).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard

from kelm.errors import ConfigError
from kelm.moe.layer import MoELayer
from kelm.train.sharded_state import optimizer_indices, register_sharded_state


def ep_mesh(ep_size: int, device_type: str = "cpu") -> DeviceMesh:
    """A device mesh of consecutive EP groups of ``ep_size`` ranks: 1-D ``("ep",)`` when one group
    spans the world, else 2-D ``("replica", "ep")``. Collective: every rank must call it."""
    world = dist.get_world_size()
    if ep_size < 1 or world % ep_size:
        raise ConfigError(
            f"moe: expert_parallel ({ep_size}) must divide the number of processes ({world}); "
            f"launch a multiple of {ep_size} processes"
        )
    if ep_size == world:
        return init_device_mesh(device_type, (ep_size,), mesh_dim_names=("ep",))
    return init_device_mesh(device_type, (world // ep_size, ep_size), mesh_dim_names=("replica", "ep"))


def ep_groups(ep_size: int, device_type: str = "cpu") -> tuple[Any, Any]:
    """(this rank's EP group, its replica group or None) for consecutive EP groups of ``ep_size``
    ranks. Collective: every rank must call it, in the same order."""
    mesh = ep_mesh(ep_size, device_type)
    replica = mesh.get_group("replica") if mesh.ndim == 2 else None
    return mesh.get_group("ep"), replica


def enable_expert_parallel(model: nn.Module, ep_size: int | None = None, average_grads: bool = True) -> list[str]:
    """Shard the experts of every MoE layer of ``model`` over EP groups of ``ep_size`` ranks
    (default: the whole world). Marks expert parameters for DDP to ignore and, with
    ``average_grads``, installs the gradient hooks described above. The experts' state dicts
    hold DTensors (sharded over the EP group, replicated over the replicas), so DCP checkpoints
    save each expert once, reshard on load and gather whole experts for a full state dict.
    Returns the expert parameter names. Collective."""
    world = dist.get_world_size()
    ep_size = ep_size or world
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, MoELayer)]
    if not layers:
        raise ConfigError("moe: the model has no MoE layers to shard")
    device_type = layers[0][1].router.weight.device.type
    mesh = ep_mesh(ep_size, device_type)
    ep_group = mesh.get_group("ep")
    replica_group = mesh.get_group("replica") if mesh.ndim == 2 else None
    placements = [Shard(0)] if mesh.ndim == 1 else [Replicate(), Shard(0)]
    ep_rank = dist.get_rank(ep_group)
    names: list[str] = []
    for prefix, layer in layers:
        layer.shard_experts(ep_group, ep_size, ep_rank)
        _shard_state_dict(layer.experts, mesh, placements)
        for pname, p in layer.experts.named_parameters():
            names.append(f"{prefix}.experts.{pname}" if prefix else f"experts.{pname}")
            if average_grads:
                p.register_hook(_grad_average_hook(world, replica_group))
    ignored = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
    model._ddp_params_and_buffers_to_ignore = ignored + names  # type: ignore[assignment]
    return names


def _shard_state_dict(experts: nn.Module, mesh: DeviceMesh, placements: list[Any]) -> None:
    """State-dict hooks: local expert shards leave as DTensors and come back as local rows (a
    whole-expert tensor, e.g. from an exported model, is cut to this rank's rows)."""
    n_local = next(experts.parameters()).shape[0]
    ep_rank = mesh.get_local_rank("ep")
    experts.kelm_ep_spec = (mesh, placements)  # type: ignore[assignment]

    def save_hook(module: nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
        for name, _ in module.named_parameters(recurse=False):
            value = state.get(prefix + name)
            if isinstance(value, torch.Tensor) and not isinstance(value, DTensor):
                state[prefix + name] = DTensor.from_local(value, mesh, placements, run_check=False)

    def load_hook(module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
        for name, p in module.named_parameters(recurse=False):
            value = state.get(prefix + name)
            if isinstance(value, DTensor):
                state[prefix + name] = value.to_local()
            elif isinstance(value, torch.Tensor) and value.shape[0] != p.shape[0]:
                state[prefix + name] = value[ep_rank * n_local : (ep_rank + 1) * n_local]

    experts._register_state_dict_hook(save_hook)
    experts._register_load_state_dict_pre_hook(load_hook, with_module=True)


def expert_parameters(model: nn.Module) -> tuple[list[nn.Parameter], Any]:
    """The sharded expert parameters of ``model`` and their EP group (``[]``, None without EP)."""
    layers = [m for m in model.modules() if isinstance(m, MoELayer) and m.ep_size > 1]
    return [p for m in layers for p in m.experts.parameters()], (layers[0].ep_group if layers else None)


def shard_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Optimizer state-dict hooks matching `enable_expert_parallel`: the per-row state of sharded
    expert parameters (Adam moments and the like) is saved as DTensors and loaded back as rows."""
    index = optimizer_indices(optimizer)
    packers: dict[int, Any] = {}
    for m in model.modules():
        spec = getattr(m.experts, "kelm_ep_spec", None) if isinstance(m, MoELayer) else None
        if spec is not None:
            packers.update({index[id(p)]: partial(_as_dtensor, spec, p.shape) for p in m.experts.parameters()})
    register_sharded_state(optimizer, packers)


def _as_dtensor(spec: tuple[DeviceMesh, list[Any]], shape: torch.Size, value: Any) -> Any:
    if isinstance(value, torch.Tensor) and not isinstance(value, DTensor) and value.shape == shape:
        return DTensor.from_local(value, spec[0], spec[1], run_check=False)
    return value


@torch.no_grad()
def grad_norm(model: nn.Module) -> torch.Tensor:
    """The norm of the whole (unsharded) gradient of a model with sharded experts: the expert
    part summed over the EP group. Collective over that group."""
    experts, group = expert_parameters(model)
    expert_ids = {id(p) for p in experts}
    params = [p for p in model.parameters() if p.grad is not None]
    if not experts:
        return torch.nn.utils.get_total_norm([p.grad for p in params])
    dense = [p.grad for p in params if id(p) not in expert_ids]
    sparse = [p.grad for p in params if id(p) in expert_ids]
    zero = torch.zeros((), dtype=torch.float64, device=params[0].grad.device)
    dense_sq = torch.nn.utils.get_total_norm(dense).double() ** 2 if dense else zero
    sparse_sq = torch.nn.utils.get_total_norm(sparse).double() ** 2 if sparse else zero.clone()
    dist.all_reduce(sparse_sq, group=group)
    return (dense_sq + sparse_sq).sqrt().float()


def _grad_average_hook(world: int, replica_group: Any) -> Any:
    def hook(grad: torch.Tensor) -> torch.Tensor:
        if replica_group is not None:
            grad = grad.clone()
            dist.all_reduce(grad, group=replica_group)
        return grad / world

    return hook
