"""How strongly experts specialise by domain: routed-slot tables and their mutual information.

The domains themselves come from entity linking (`kelm.linking.domains`); a token with a negative
domain id (outside every linked mention) is left out of every table.
"""

from __future__ import annotations

import torch

from kelm.moe.router import normalized_mutual_information, routing_table


def specialisation(joint: torch.Tensor) -> dict[str, float]:
    """How much expert choice depends on the domain, from a (domains, experts) table of routed slots:

    - ``nmi``: I(domain; expert) / H(domain), 0 when routing ignores the domain, 1 when the chosen
      expert determines it;
    - ``top_expert_share``: the share of each domain's slots that go to that domain's most used
      expert, averaged over domains with slots (1/E for uniform routing, 1 for one expert each)."""
    joint = joint.double()
    per_domain = joint.sum(1)
    used = per_domain > 0
    share = (joint[used].max(1).values / per_domain[used]).mean() if used.any() else torch.tensor(0.0)
    return {"nmi": normalized_mutual_information(joint), "top_expert_share": float(share)}


__all__ = ["routing_table", "specialisation"]
