"""Model compression that works on any ``nn.Module``: int8 storage and runtimes, pruning, cross-layer
weight sharing, distillation losses and latency measurement.

This package knows torch and Hugging Face module shapes, not kelm's tasks: `kelm.lm` and
`kelm.kge` load compressed folders through it, the ``distill`` task trains with its losses, and
`kelm.app.compress` (``kelm compress``) composes them into compressed run folders."""
