"""Row-sparse embedding gradients that land in one dense buffer kept across steps (exact).

PyTorch's dense embedding backward allocates a fresh ``rows x dim`` zero tensor for every lookup
in every step (a 164 MB table is mapped and zeroed page by page, once per lookup) and scatters
into it. With `row_sparse_embedding_grads` the lookups return sparse gradients, autograd sums
them, and a post-accumulate hook adds the sum into a dense buffer zeroed in place, so the
optimizer, gradient clipping and DDP see the same dense gradient as before. A kernel that takes
the table itself (not through a lookup) asks `emits_sparse_grads` whether it may hand back a
sparse gradient too (`RowGradient`). Under a wrapper that swaps the module's parameters
(FSDP) the dense path is kept.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn


def row_sparse_embedding_grads(model: nn.Module) -> int:
    """Make every untied, trainable ``nn.Embedding`` of ``model`` produce row-sparse gradients
    that land in a persistent dense buffer; returns how many embeddings were changed."""
    uses = parameter_uses(model)
    changed = 0
    for module in model.modules():
        w = getattr(module, "weight", None)
        if not isinstance(module, nn.Embedding) or w is None or not w.requires_grad or module.sparse:
            continue
        if uses[id(w)] > 1 or module.max_norm is not None:  # tied to an output layer, or renormed in place
            continue
        module.forward = SparseGradForward(module, w)  # module.sparse stays False: DDP expects dense
        w.register_post_accumulate_grad_hook(DenseGradBuffer())
        changed += 1
    return changed


def dense_embedding_grads(model: nn.Module) -> int:
    """Undo `row_sparse_embedding_grads`: embeddings give PyTorch's dense gradients again (their
    buffer hooks pass dense gradients through); returns how many were changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module.__dict__.get("forward"), SparseGradForward):
            del module.forward
            changed += 1
    return changed


def parameter_uses(model: nn.Module) -> dict[int, int]:
    """How many modules of ``model`` hold each parameter (by ``id``): above 1 means tied."""
    uses: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            uses[id(p)] = uses.get(id(p), 0) + 1
    return uses


class SparseGradForward:
    """``nn.Embedding.forward`` with a sparse gradient, while the module still holds the weight it
    was given (a wrapper that swaps parameters, like FSDP, gets the dense gradient)."""

    def __init__(self, module: nn.Embedding, weight: torch.Tensor):
        self.module, self.weight = module, weakref.ref(weight)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        m = self.module
        sparse = m.weight is self.weight()
        return F.embedding(ids, m.weight, m.padding_idx, None, m.norm_type, m.scale_grad_by_freq, sparse=sparse)


class DenseGradBuffer:
    """Post-accumulate hook: a sparse ``.grad`` becomes a dense one in a buffer reused every step."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def __call__(self, param: torch.Tensor) -> None:
        grad = param.grad
        if grad is None or not grad.is_sparse:
            return
        if self.buffer is None or self.buffer.shape != param.shape or self.buffer.device != param.device:
            self.buffer = torch.zeros_like(param)
        else:
            self.buffer.zero_()
        grad = grad.coalesce()
        self.buffer.index_add_(0, grad.indices()[0], grad.values())
        param.grad = self.buffer


def emits_sparse_grads(module: nn.Module) -> bool:
    """True when ``module`` is an embedding made row-sparse here, still holding its own weight."""
    forward = module.__dict__.get("forward")
    return isinstance(forward, SparseGradForward) and module.weight is forward.weight()


class RowGradient:
    """The gradient of a ``(rows, dim)`` table receiving rows at the ids of ``idx`` (any shape),
    built chunk by chunk: dense (a fresh zero table), or with ``sparse`` one row per distinct id,
    returned as a coalesced sparse tensor (for a table whose lookups are row-sparse)."""

    def __init__(self, table: torch.Tensor, idx: torch.Tensor, sparse: bool):
        self.shape, self.sparse = table.shape, sparse
        if sparse:
            self.ids, inverse = torch.unique(idx, return_inverse=True)
            self.slots = inverse.view(idx.shape)
            self.values = table.new_zeros(len(self.ids), table.shape[1])
        else:
            self.slots, self.values = idx, torch.zeros_like(table)

    def add(self, chunk: slice, rows: torch.Tensor) -> None:
        """Add ``rows`` (``(n, dim)``) at the ids ``idx[chunk]`` (flattened)."""
        self.values.index_add_(0, self.slots[chunk].reshape(-1), rows)

    def result(self) -> torch.Tensor:
        if not self.sparse:
            return self.values
        return torch.sparse_coo_tensor(
            self.ids[None], self.values, self.shape, is_coalesced=True, check_invariants=False
        )


__all__ = [
    "DenseGradBuffer",
    "dense_embedding_grads",
    "RowGradient",
    "SparseGradForward",
    "emits_sparse_grads",
    "parameter_uses",
    "row_sparse_embedding_grads",
]
