"""`kelm link`: the knowledge-graph entities a text mentions."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

out = Console(highlight=False, soft_wrap=True, markup=False)


def link(
    text: Annotated[str, typer.Argument(help="The text to link.")],
    kg: Annotated[str, typer.Option("--kg", help="Graph: registered name, file or folder.")] = "umls",
    encoder: Annotated[str, typer.Option(help="Encoder for nearest-neighbour linking (minilm, a folder).")] = "minilm",
    no_nn: Annotated[bool, typer.Option("--no-nn", help="Dictionary matching only.")] = False,
    threshold: Annotated[float, typer.Option(help="Lowest cosine for a nearest-neighbour link.")] = 0.7,
    aliases: Annotated[str | None, typer.Option(help="id<TAB>alias... file of extra names.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print each mention: character span, text, entity id and label, score and method (exact, alias, nn)."""
    from kelm.kg.datasets import load_graph
    from kelm.linking.linker import EntityLinker, build_entity_index, read_aliases
    from kelm.lm.encoding import load_text_embedder

    graph = load_graph(kg)
    index = embed = None
    if not no_nn:
        embed, _ = load_text_embedder(encoder)
        index = build_entity_index(graph, embed)
    linker = EntityLinker.from_kg(graph, read_aliases(aliases) if aliases else None, index, embed, threshold)
    mentions = linker.link(text)
    rows = [
        {
            "start": m.start,
            "end": m.end,
            "text": text[m.start : m.end],
            "entity": m.entity,
            "label": graph.entities[m.entity].label or m.entity,
            "score": round(m.score, 4),
            "method": m.method,
        }
        for m in mentions
    ]
    if as_json:
        out.print(json.dumps(rows))
        return
    if not rows:
        out.print("no entities linked")
    for r in rows:
        out.print(
            f"{r['start']:>4}-{r['end']:<4} {r['text']!r:30} -> {r['entity']} ({r['label']})"
            f"  {r['score']:.3f} {r['method']}"
        )
