"""Byte-level causal language modelling on plain text: the engine's first task.

Text is encoded as UTF-8 bytes (vocabulary 256), concatenated, and packed into windows of
``seq_len + 1`` tokens, so no compute goes to padding. The last ``valid_fraction`` of the
stream is held out; evaluation reports loss and perplexity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kelm.config import Section
from kelm.errors import ConfigError, DataError
from kelm.lm.gpt import GPT, GPTConfig
from kelm.moe.plan import ExpertParallelPlan
from kelm.train.parallel import ParallelPlan
from kelm.train.task import Batch, Task


class CausalLMConfig(Section):
    """``[task]`` for ``causal-lm``."""

    name: str = "causal-lm"
    text: list[str] = Field(default_factory=list, description="text files or folders of .txt files")
    seq_len: int = Field(64, ge=2)
    valid_fraction: float = Field(0.1, gt=0, lt=1)
    d_model: int = Field(128, ge=8)
    n_layer: int = Field(2, ge=1)
    n_head: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    # Mixture of experts (kelm.moe): every block's FFN becomes sparse when moe_experts > 0.
    moe_experts: int = Field(0, ge=0, description="experts per FFN; 0 keeps the dense GPT")
    moe_top_k: int = Field(2, ge=1)
    moe_d_ff: int | None = Field(None, ge=1, description="one expert's width (default 4 x d_model)")
    moe_expert_type: str = "swiglu"
    moe_capacity_factor: float | None = Field(None, gt=0, description="unset: dropless")
    moe_aux_loss_coef: float = Field(0.01, ge=0)
    moe_z_loss_coef: float = Field(0.001, ge=0)
    moe_bias_balancing: bool = False
    moe_shared_experts: int = Field(0, ge=0)
    moe_domain_routing: str | None = Field(
        None,
        description="knowledge-guided routing: a KG ('umls') whose linked entities' domains feed the router",
    )
    moe_domain_init_std: float = Field(1.0, ge=0, description="init std of the domain embeddings")
    moe_domain_documents: bool = Field(
        False, description="lines 'entity_id<TAB>text' give all their tokens that entity's domain"
    )
    moe_expert_parallel: int = Field(
        1, ge=1, description="shard each layer's experts over this many ranks (kelm train --nproc, strategy ddp)"
    )


class PairedWindows(Sequence[tuple[torch.Tensor, torch.Tensor]]):
    """Token windows with the KG domain id of each token."""

    def __init__(self, tokens: PackedWindows, domains: PackedWindows):
        self.tokens, self.domains = tokens, domains

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return self.tokens[i], self.domains[i]


class PackedWindows(Sequence[torch.Tensor]):
    """Non-overlapping windows of ``length`` tokens over a 1-D token tensor."""

    def __init__(self, tokens: torch.Tensor, length: int):
        self.tokens, self.length = tokens, length

    def __len__(self) -> int:
        return len(self.tokens) // self.length

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.tokens[i * self.length : (i + 1) * self.length]


def read_corpus(paths: list[str]) -> bytes:
    """Concatenate text files (folders: their ``*.txt`` in sorted order), separated by newlines."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(p.rglob("*.txt")))
        elif p.is_file():
            files.append(p)
        else:
            raise DataError("text file not found", p)
    chunks = []
    for f in files:
        data = f.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            raise DataError("invalid UTF-8", f, line) from None
        chunks.append(data)
    corpus = b"\n".join(chunks)
    if not corpus.strip():
        raise DataError("the text corpus is empty", ", ".join(paths) or "<no files>")
    return corpus


class CausalLMTask(Task):
    config_class = CausalLMConfig
    name = "causal-lm"
    monitor = "loss"
    monitor_mode = "min"

    def __init__(self, cfg: CausalLMConfig, corpus: bytes | None = None):
        self.cfg = cfg
        data = corpus if corpus is not None else read_corpus(cfg.text)
        tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)
        window = cfg.seq_len + 1
        n_valid = max(window, int(len(tokens) * cfg.valid_fraction))
        if len(tokens) < n_valid + window:
            raise DataError(f"corpus too small: {len(tokens)} bytes for seq_len {cfg.seq_len}", "task.text")
        self._train: Sequence[Any] = PackedWindows(tokens[:-n_valid], window)
        self._valid: Sequence[Any] = PackedWindows(tokens[-n_valid:], window)
        self._moe_stats: dict[str, float] = {}
        self.domain_names: list[str] = []
        if cfg.moe_domain_routing is not None:
            if not cfg.moe_experts:
                raise ConfigError("task.moe_domain_routing needs a mixture-of-experts model (task.moe_experts > 0)")
            from kelm.linking.domains import byte_domains, load_lexicon

            lexicon = load_lexicon(cfg.moe_domain_routing)
            self.domain_names = lexicon.names
            self.domains = byte_domains(lexicon, data, cfg.moe_domain_documents).to(torch.int64)
            self._train = PairedWindows(self._train, PackedWindows(self.domains[:-n_valid], window))
            self._valid = PairedWindows(self._valid, PackedWindows(self.domains[-n_valid:], window))
        if cfg.moe_experts and cfg.moe_experts % cfg.moe_expert_parallel:
            raise ConfigError(
                f"task.moe_expert_parallel ({cfg.moe_expert_parallel}) must divide task.moe_experts "
                f"({cfg.moe_experts}): each rank holds the same number of experts"
            )
        if self.moe_table() is not None:
            from kelm.moe import MoEConfig

            MoEConfig.from_dict({**self.moe_table(), "d_model": cfg.d_model})  # type: ignore[dict-item]

    def moe_table(self) -> dict[str, Any] | None:
        c = self.cfg
        if not c.moe_experts:
            return None
        table = {
            "n_experts": c.moe_experts,
            "top_k": c.moe_top_k,
            "d_ff": c.moe_d_ff,
            "expert_type": c.moe_expert_type,
            "capacity_factor": c.moe_capacity_factor,
            "aux_loss_coef": c.moe_aux_loss_coef,
            "z_loss_coef": c.moe_z_loss_coef,
            "bias_balancing": c.moe_bias_balancing,
            "n_shared_experts": c.moe_shared_experts,
            "expert_parallel": c.moe_expert_parallel,
            "n_domains": len(self.domain_names),
            "domain_init_std": c.moe_domain_init_std,
        }
        return {k: v for k, v in table.items() if v is not None}

    def gpt_config(self) -> GPTConfig:
        c = self.cfg
        return GPTConfig(256, c.seq_len, c.d_model, c.n_layer, c.n_head, c.dropout, moe=self.moe_table())

    def parallel_plan(self) -> ParallelPlan:
        """Experts sharded as the MoE layers ask; FSDP2 and checkpointing go block by block."""
        return ExpertParallelPlan(blocks="blocks")

    def build_model(self) -> nn.Module:
        return GPT(self.gpt_config())

    def train_data(self) -> Sequence[Any]:
        return self._train

    def eval_data(self) -> Sequence[Any]:
        return self._valid

    def collate(self, samples: list[Any]) -> Batch:
        if samples and isinstance(samples[0], tuple):
            return {"ids": torch.stack([s[0] for s in samples]), "domains": torch.stack([s[1] for s in samples])}
        return {"ids": torch.stack(samples)}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        ids = batch["ids"]
        domains = batch.get("domains")
        logits_BTV = model(ids[:, :-1]) if domains is None else model(ids[:, :-1], domains[:, :-1])
        loss = F.cross_entropy(logits_BTV.reshape(-1, logits_BTV.shape[-1]).float(), ids[:, 1:].reshape(-1))
        if self.cfg.moe_experts:
            from kelm.moe import moe_aux_loss, moe_stats

            aux = moe_aux_loss(model)  # None in evaluation mode
            if aux is not None:
                self._moe_stats = moe_stats(model)
                return loss + aux, {"lm_loss": float(loss.detach()), **self._moe_stats}
        return loss, {}

    def batch_weight(self, batch: Batch) -> int:
        return batch["ids"].shape[0]

    def tokens(self, batch: Batch) -> int:
        ids = batch["ids"]
        return ids.shape[0] * (ids.shape[1] - 1)

    def finalize_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        # MoE: router statistics of the last training step (global over ranks) join the metrics
        return {**metrics, "perplexity": math.exp(min(metrics["loss"], 50.0)), **self._moe_stats}

    def model_config(self) -> dict[str, Any]:
        return {"task": self.name, "model": {"kind": "gpt", **self.gpt_config().to_dict()}}
