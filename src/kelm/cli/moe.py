"""`kelm moe`: mixture-of-experts tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(help="Mixture of experts: make dense models sparse.", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)


@app.command("upcycle")
def upcycle_cmd(
    model: Annotated[
        str, typer.Option("--model", "-m", help="minilm, a Hugging Face folder or a kelm GPT run/model folder.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the sparse model.")],
    experts: Annotated[int, typer.Option(help="Experts per FFN (copies of the dense FFN).")] = 8,
    top_k: Annotated[int, typer.Option("--top-k", help="Experts per token.")] = 2,
    capacity_factor: Annotated[
        float | None, typer.Option("--capacity-factor", help="Token slots per expert x fair share; unset: dropless.")
    ] = None,
    no_renormalize: Annotated[
        bool,
        typer.Option(
            "--no-renormalize", help="Keep raw top-k probabilities (output no longer equals the dense model's)."
        ),
    ] = False,
    router_std: Annotated[float, typer.Option("--router-std", help="Init std of the new router.")] = 0.002,
    domains: Annotated[
        str | None,
        typer.Option(help="Knowledge-guided routing: link inputs against this KG (umls) and route by entity domain."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Turn the dense FFNs of a model into MoE layers whose experts start as copies of the FFN."""
    from kelm.lm.upcycle import upcycle

    settings = {
        "n_experts": experts,
        "top_k": top_k,
        "capacity_factor": capacity_factor,
        "renormalize": not no_renormalize,
        "router_init_std": router_std,
    }
    summary = upcycle(model, out_dir, settings, domains)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    out.print(
        f"upcycled {summary['moe_layers']} FFNs of {model} into {experts} experts (top-{top_k}); "
        f"{summary['parameters'] / 1e6:.1f}M parameters → {out_dir}"
    )
