"""What a client sends back, how the server checks it, and how checked updates are averaged.

An update is a flat map of tensors. A dense parameter travels whole under its name. A parameter
with per-row weights (an embedding table under FedE) travels as three entries: the rows the
client trained (``NAME#rows``), their values (``NAME``) and their weights (``NAME#weight``,
e.g. how often the client's triples use each entity). Averaging is per row: a row's new value
is the weighted mean over the clients that sent it; a row nobody sent keeps its value. Dense
parameters are weighted by the client's number of training examples (FedAvg).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

ROWS, WEIGHT = "#rows", "#weight"
State = dict[str, torch.Tensor]


class BadUpdate(ValueError):
    """A client's update that does not fit the global model: rejected, never averaged in."""


def encode_update(state: Mapping[str, torch.Tensor], row_weights: Mapping[str, torch.Tensor]) -> State:
    """A trained model's update: dense tensors, and for ``row_weights``' parameters only the rows
    with a positive weight (FedE sends the embeddings of the client's own entities only)."""
    out: State = {}
    for name, value in state.items():
        w = row_weights.get(name)
        if w is None:
            out[name] = value.detach().cpu()
            continue
        rows = torch.nonzero(w > 0).flatten()
        out[name], out[name + ROWS], out[name + WEIGHT] = value.detach().cpu()[rows], rows, w[rows].double()
    return out


@dataclass
class Update:
    """One client's checked update and how much it weighs."""

    tensors: State
    examples: float


def check_update(
    tensors: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    examples: float,
    row_params: frozenset[str] = frozenset(),
) -> Update:
    """``tensors`` if it is an update of ``reference`` (same parameters, shapes and dtypes, finite
    values, rows in range, ``row_params`` sent by rows and the others whole); otherwise a
    `BadUpdate` saying what is wrong."""
    if not (isinstance(examples, int | float) and math.isfinite(examples) and examples > 0):
        raise BadUpdate(f"number of examples {examples!r} is not a positive number")
    names = {k for k in tensors if not k.endswith((ROWS, WEIGHT))}
    extras = {k for k in tensors if k.endswith((ROWS, WEIGHT))} - {n + s for n in row_params for s in (ROWS, WEIGHT)}
    if extras:
        raise BadUpdate(f"unexpected entries {sorted(extras)[:3]}")
    if names != set(reference):
        missing, extra = sorted(set(reference) - names), sorted(names - set(reference))
        raise BadUpdate(f"parameters do not match the model (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, ref in reference.items():
        value = tensors[name]
        if value.dtype != ref.dtype:
            raise BadUpdate(f"{name}: dtype {value.dtype}, the model's is {ref.dtype}")
        rows = tensors.get(name + ROWS)
        if (rows is not None) != (name in row_params):
            raise BadUpdate(f"{name}: expected {'rows' if name in row_params else 'the whole tensor'}")
        if rows is None:
            if tuple(value.shape) != tuple(ref.shape):
                raise BadUpdate(f"{name}: shape {tuple(value.shape)}, the model's is {tuple(ref.shape)}")
        else:
            _check_rows(name, value, rows, tensors.get(name + WEIGHT), ref)
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise BadUpdate(f"{name}: values are not all finite")
    return Update(dict(tensors), float(examples))


def _check_rows(
    name: str, value: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor | None, ref: torch.Tensor
) -> None:
    if weight is None:
        raise BadUpdate(f"{name}: rows sent without their weights")
    if rows.dtype != torch.int64 or rows.dim() != 1:
        raise BadUpdate(f"{name}: row ids must be one int64 vector")
    if tuple(value.shape) != (len(rows), *ref.shape[1:]) or tuple(weight.shape) != (len(rows),):
        raise BadUpdate(f"{name}: {len(rows)} rows but values {tuple(value.shape)} and weights {tuple(weight.shape)}")
    if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= ref.shape[0]):
        raise BadUpdate(f"{name}: row ids outside 0..{ref.shape[0] - 1}")
    if len(torch.unique(rows)) != len(rows):
        raise BadUpdate(f"{name}: row ids repeat")
    if not bool(torch.isfinite(weight).all()) or bool((weight <= 0).any()):
        raise BadUpdate(f"{name}: row weights must be positive and finite")


def aggregate(updates: list[Update], reference: Mapping[str, torch.Tensor], row_params: frozenset[str]) -> State:
    """The weighted average of checked updates (see the module docstring); ``reference`` supplies
    the rows no client sent."""
    if not updates:
        raise ValueError("no update to aggregate")
    total = sum(u.examples for u in updates)
    out: State = {}
    for name, ref in reference.items():
        if not ref.is_floating_point():
            out[name] = updates[0].tensors[name].clone()
            continue
        if name not in row_params:
            acc = torch.zeros(ref.shape, dtype=torch.float64)
            for u in updates:
                acc += u.tensors[name].double() * (u.examples / total)
            out[name] = acc.to(ref.dtype)
            continue
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        mass = torch.zeros(ref.shape[0], dtype=torch.float64)
        for u in updates:
            rows, w = u.tensors[name + ROWS], u.tensors[name + WEIGHT].double()
            acc.index_add_(0, rows, u.tensors[name].double() * w.view(-1, *[1] * (ref.dim() - 1)))
            mass.index_add_(0, rows, w)
        seen = mass > 0
        merged = ref.detach().clone().double()
        merged[seen] = acc[seen] / mass[seen].view(-1, *[1] * (ref.dim() - 1))
        out[name] = merged.to(ref.dtype)
    return out


def weighted_mean(parts: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Metrics averaged over clients, each weighted by its number of examples (keys all share)."""
    total = sum(w for w, _ in parts)
    keys = set.intersection(*(set(m) for _, m in parts)) if parts else set()
    return {k: sum(w * m[k] for w, m in parts) / total for k in sorted(keys)} if total else {}
