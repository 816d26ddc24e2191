"""Settings of one mixture-of-experts layer, validated once so every piece can trust them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from kelm.errors import ConfigError

EXPERT_TYPES = ("swiglu", "mlp")
#: Activations of ``mlp`` experts (the source FFN's, when upcycling).
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")
IMPLS = ("auto", "grouped_mm", "padded", "loop")


@dataclass
class MoEConfig:
    """One sparse FFN: ``n_experts`` experts, each token sent to ``top_k`` of them.

    ``d_ff`` is one expert's hidden width (default ``4 * d_model``). ``capacity_factor`` None
    means dropless; otherwise each expert takes at most ``ceil(factor * tokens * top_k / n_experts)``
    token slots per forward pass, first choices before second ones, and the rest are dropped (zero
    expert output). ``expert_parallel`` > 1 asks the engine to shard the experts over that many
    ranks (`kelm.moe.enable_expert_parallel`); it does not change the model. ``n_domains`` > 0
    enables knowledge-guided routing: a learned embedding of a token's entity type/domain is added
    to the router input (`kelm.moe.domains`)."""

    d_model: int
    n_experts: int = 8
    top_k: int = 2
    d_ff: int | None = None
    expert_type: str = "swiglu"
    activation: str = "gelu"
    bias: bool = False
    renormalize: bool = True
    capacity_factor: float | None = None
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.001
    bias_balancing: bool = False
    bias_update_rate: float = 1e-3
    n_shared_experts: int = 0
    router_init_std: float = 0.02
    n_domains: int = 0
    #: Init std of the domain embeddings (0: start as the plain router).
    domain_init_std: float = 1.0
    #: Expert-parallel degree: experts sharded over groups of this many ranks when training.
    expert_parallel: int = 1
    global_stats: bool = True
    impl: str = "auto"

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.d_model < 1 or self.d_ff < 1:
            raise ConfigError(f"moe: d_model ({self.d_model}) and d_ff ({self.d_ff}) must be positive")
        if self.n_experts < 1:
            raise ConfigError(f"moe: n_experts must be at least 1 (got {self.n_experts})")
        if not 1 <= self.top_k <= self.n_experts:
            raise ConfigError(
                f"moe: top_k ({self.top_k}) must be between 1 and the number of experts ({self.n_experts})"
            )
        if self.expert_type not in EXPERT_TYPES:
            raise ConfigError(
                f"moe: unknown expert_type '{self.expert_type}' (choose one of: {', '.join(EXPERT_TYPES)})"
            )
        if self.activation not in ACTIVATIONS:
            choices = ", ".join(ACTIVATIONS)
            raise ConfigError(f"moe: unknown activation '{self.activation}' (choose one of: {choices})")
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise ConfigError(
                f"moe: capacity_factor must be positive, or unset for dropless (got {self.capacity_factor})"
            )
        if self.n_shared_experts < 0 or self.n_domains < 0:
            raise ConfigError("moe: n_shared_experts and n_domains must not be negative")
        if self.expert_parallel < 1 or self.n_experts % self.expert_parallel:
            raise ConfigError(
                f"moe: {self.n_experts} experts cannot be split evenly over expert_parallel = {self.expert_parallel} "
                "ranks (the number of experts must be a multiple of it)"
            )
        if self.impl not in IMPLS:
            raise ConfigError(f"moe: unknown impl '{self.impl}' (choose one of: {', '.join(IMPLS)})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoEConfig:
        """Build from a table, naming any unknown key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"moe: unknown setting(s) {', '.join(unknown)}")
        return cls(**data)
