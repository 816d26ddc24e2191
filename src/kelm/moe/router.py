"""Top-k router: fp32 softmax gate, Switch load-balancing loss over the global batch, z-loss,
auxiliary-loss-free bias balancing and optional knowledge-guided (domain) routing input.

Global-batch statistics
-----------------------
The Switch loss ``E * sum_e f_e * P_e`` (``f_e``: share of token slots sent to expert ``e``,
``P_e``: mean router probability of ``e``) is meant over the *global* batch of an optimizer step:
every gradient-accumulation micro-batch on every data-parallel rank. Each training forward pass
all-reduces its per-expert slot counts, probability sums, token count and the other statistics
(one small float64 vector per layer) and adds them to running totals that live until the next
optimizer step (a global ``Optimizer.step`` post-hook marks step boundaries; `reset_statistics`
does it by hand). The differentiable loss of a micro-batch is ``E * sum_e f_e^run * P_e^local``:
the fractions ``f`` (not differentiable anyway) come from the running global totals, ``P`` from
this micro-batch's own tokens. With one micro-batch per step this is exactly the gradient of the
global-batch loss at any world size (the engine averages rank gradients); with accumulation the
micro-batch ``m`` uses the totals of micro-batches ``1..m`` (the last one the exact global ``f``), a
running approximation of the gradient. The *value* reported by `stats` (``aux_loss``) is computed
from the complete totals and is identical for any split of the same global batch over
micro-batches and ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from kelm.moe.config import MoEConfig

# -- step boundaries -------------------------------------------------------------------------
_STEP = [0]


def _count_step(*_: object) -> None:
    _STEP[0] += 1


register_optimizer_step_post_hook(_count_step)


def optimizer_steps() -> int:
    """How many optimizer steps this process has taken (any optimizer)."""
    return _STEP[0]


@dataclass
class RouterOutput:
    logits: torch.Tensor  # (N, E) fp32
    probs: torch.Tensor  # (N, E) fp32 softmax
    experts: torch.Tensor  # (N, k) int64, chosen experts
    weights: torch.Tensor  # (N, k) fp32 combine weights


class TopKRouter(nn.Module):
    """Scores ``E`` experts per token in fp32 and keeps the ``k`` best.

    With ``bias_balancing`` a per-expert bias (a buffer, no gradient) is added to the scores used
    for *selection* only; combine weights stay the unbiased probabilities. After each optimizer
    step the bias moves by ``bias_update_rate * sign(mean load - load_e)`` (DeepSeek-V3)."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_experts, cfg.d_model))
        nn.init.normal_(self.weight, std=cfg.router_init_std)
        self.register_buffer("expert_bias", torch.zeros(cfg.n_experts))
        self.domain_embedding: nn.Embedding | None = None
        if cfg.n_domains:  # drawn from its own generator: the rest of a model's init stays as without it
            self.domain_embedding = nn.Embedding(cfg.n_domains, cfg.d_model, _weight=torch.empty(nd_shape(cfg)))
            self.domain_embedding.keep_init = True  # type: ignore[assignment]
        self.reset_domain_embedding()
        E, nd = cfg.n_experts, cfg.n_domains
        # layout of the statistics vector: counts, prob sums, [tokens, dropped, entropy, z], domain joint
        self._n_stats = 2 * E + 4 + nd * E
        self._acc = torch.zeros(self._n_stats, dtype=torch.float64)
        self._acc_step = -1
        self.stats_group: dist.ProcessGroup | None = None  # None: the default (world) group

    @torch.no_grad()
    def reset_domain_embedding(self) -> None:
        """Draw the domain embeddings (std ``domain_init_std``) from a generator seeded by torch's
        initial seed, so adding them leaves every other parameter's init unchanged."""
        w = self.domain_embedding.weight if self.domain_embedding is not None else None
        if w is None or w.is_meta:
            return
        g = torch.Generator().manual_seed(torch.initial_seed() + 1)
        w.copy_(torch.randn(w.shape, generator=g) * self.cfg.domain_init_std)

    # -- routing ------------------------------------------------------------------------------
    def forward(self, x_ND: torch.Tensor, domain_ids: torch.Tensor | None = None) -> RouterOutput:
        h = x_ND
        if self.domain_embedding is not None and domain_ids is not None:
            ids = domain_ids.reshape(-1)
            has = (ids >= 0).unsqueeze(-1)
            h = h + self.domain_embedding(ids.clamp_min(0)) * has.to(h.dtype)
        if torch.is_autocast_enabled(h.device.type):
            with torch.autocast(h.device.type, enabled=False):
                logits = F.linear(h.float(), self.weight.float())
        else:
            logits = F.linear(h.float(), self.weight.float())
        probs = logits.softmax(-1)
        k = self.cfg.top_k
        if self.cfg.bias_balancing:
            experts = (probs.detach() + self.expert_bias).topk(k, dim=-1).indices
            weights = probs.gather(1, experts)
        else:
            weights, experts = probs.topk(k, dim=-1)
        if self.cfg.renormalize and k > 1:
            weights = weights / weights.sum(-1, keepdim=True)
        return RouterOutput(logits, probs, experts, weights)

    # -- statistics ---------------------------------------------------------------------------
    def _roll_step(self) -> None:
        step = optimizer_steps()
        if step != self._acc_step:
            if self._acc_step >= 0 and self.cfg.bias_balancing:
                self.update_bias()
            self._acc = torch.zeros(self._n_stats, dtype=torch.float64)
            self._acc_step = step

    def reset_statistics(self) -> None:
        """Start a new global batch (done automatically after each optimizer step)."""
        self._acc = torch.zeros(self._n_stats, dtype=torch.float64)
        self._acc_step = optimizer_steps()

    @torch.no_grad()
    def update_bias(self) -> None:
        """Move the selection bias toward balance from the current totals (all ranks agree on them)."""
        counts = self._acc[: self.cfg.n_experts].to(self.expert_bias)
        if counts.sum() > 0:
            self.expert_bias += self.cfg.bias_update_rate * torch.sign(counts.mean() - counts)

    @torch.no_grad()
    def record(
        self,
        out: RouterOutput,
        dropped: torch.Tensor | int,
        domain_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """Add this micro-batch's statistics (summed over ranks) to the step totals; return the totals."""
        self._roll_step()
        E, nd = self.cfg.n_experts, self.cfg.n_domains
        N = out.probs.shape[0]
        flat = out.experts.reshape(-1)
        counts = torch.bincount(flat, minlength=E).double()
        logits, probs = out.logits.double(), out.probs.double()
        entropy = -(probs * logits.log_softmax(-1)).sum()
        z = torch.logsumexp(logits, -1).pow(2).sum()
        parts = [
            counts,
            probs.sum(0),
            torch.tensor([N, float(dropped)], dtype=torch.float64),
            torch.stack([entropy, z]).double().cpu(),
        ]
        if nd:
            joint = torch.zeros(nd * E, dtype=torch.float64)
            if domain_ids is not None:
                joint = routing_table(out.experts, domain_ids.reshape(-1), nd, E).reshape(-1).double()
            parts.append(joint)
        local = torch.cat([p.cpu() for p in parts])
        if self._global():
            dist.all_reduce(local, group=self.stats_group)
        self._acc += local
        return self._acc

    def _global(self) -> bool:
        if not (self.cfg.global_stats and dist.is_available() and dist.is_initialized()):
            return False
        return dist.get_world_size(self.stats_group) > 1

    def stats(self) -> dict[str, float]:
        """Router statistics of the current global batch (empty before any training forward pass)."""
        acc, E, nd = self._acc, self.cfg.n_experts, self.cfg.n_domains
        tokens = float(acc[2 * E])
        if tokens == 0:
            return {}
        counts, prob_sum = acc[:E], acc[E : 2 * E]
        slots = tokens * self.cfg.top_k
        load = counts / slots
        out = {f"load_e{e}": float(load[e]) for e in range(E)}
        out["load_max"] = float(load.max() * E)  # 1.0 = perfectly balanced
        out["dropped_fraction"] = float(acc[2 * E + 1] / slots)
        out["router_entropy"] = float(acc[2 * E + 2] / tokens)
        out["z_loss"] = float(acc[2 * E + 3] / tokens)
        out["aux_loss"] = float(E * (load * prob_sum / tokens).sum())
        if nd:
            out["domain_expert_nmi"] = normalized_mutual_information(acc[2 * E + 4 :].view(nd, E))
        return out


def nd_shape(cfg: MoEConfig) -> tuple[int, int]:
    return (cfg.n_domains, cfg.d_model)


def switch_loss(running_counts: torch.Tensor, running_tokens: float, top_k: int, probs: torch.Tensor) -> torch.Tensor:
    """``E * sum_e f_e * P_e`` with ``f`` from (global, running) slot counts and ``P`` from ``probs`` (N, E)."""
    E = probs.shape[-1]
    f = (running_counts / (running_tokens * top_k)).to(probs)
    return E * (f * probs.mean(0)).sum()


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean squared log-partition of the router logits."""
    return torch.logsumexp(logits, -1).pow(2).mean()


def normalized_mutual_information(joint: torch.Tensor) -> float:
    """``I(domain; expert) / H(domain)`` from a (domains, experts) count table: 0 when routing ignores
    the domain, 1 when the chosen expert determines it."""
    total = float(joint.sum())
    if total == 0:
        return 0.0
    p = joint.double() / total
    pd, pe = p.sum(1, keepdim=True), p.sum(0, keepdim=True)
    nz = p > 0
    mi = float((p[nz] * (p[nz] / (pd @ pe)[nz]).log()).sum())
    hd = float(-(pd[pd > 0] * pd[pd > 0].log()).sum())
    return mi / hd if hd > 0 else 0.0


def routing_table(experts_NK: torch.Tensor, domains_N: torch.Tensor, n_domains: int, n_experts: int) -> torch.Tensor:
    """(domains, experts) counts of routed slots from chosen experts (N, k) and token domains (N,);
    tokens with a negative domain are left out."""
    ids = domains_N.reshape(-1, 1).expand(-1, experts_NK.shape[1]).reshape(-1).long()
    flat = experts_NK.reshape(-1)
    keep = ids >= 0
    return torch.bincount(ids[keep] * n_experts + flat[keep], minlength=n_domains * n_experts).view(
        n_domains, n_experts
    )
