"""Sparse mixture-of-experts: router, experts, dispatcher, expert parallelism and upcycling."""

from kelm.moe.config import MoEConfig
from kelm.moe.layer import DispatchPlan, MoELayer, moe_aux_loss, moe_layers, moe_stats, plan_dispatch
from kelm.moe.parallel import enable_expert_parallel
from kelm.moe.router import TopKRouter, normalized_mutual_information

__all__ = [
    "DispatchPlan",
    "MoEConfig",
    "MoELayer",
    "TopKRouter",
    "enable_expert_parallel",
    "moe_aux_loss",
    "moe_layers",
    "moe_stats",
    "normalized_mutual_information",
    "plan_dispatch",
]
