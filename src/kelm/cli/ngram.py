"""`kelm ngram`: train a modified Kneser-Ney n-gram model into an ARPA file, and score text with one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kelm.cli.options import JsonOpt

app = typer.Typer(help="N-gram language models: interpolated modified Kneser-Ney, ARPA files.", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)

TextsArg = Annotated[list[Path], typer.Argument(help="Plain-text files: one sentence per line, whitespace tokens.")]


@app.command("train")
def train_cmd(
    texts: TextsArg,
    model_out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the ARPA file.")],
    order: Annotated[int, typer.Option(help="N-gram order, 1 to 5.")] = 3,
    lowercase: Annotated[bool, typer.Option("--lowercase", help="Lowercase the text (recorded in the model).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Count n-grams, estimate modified Kneser-Ney, write ARPA; print n-gram counts and train perplexity."""
    from kelm.lm import check_order, read_sentences, train_kneser_ney, write_arpa

    check_order(order)
    sentences = read_sentences(texts, lowercase=lowercase)
    model = train_kneser_ney(sentences, order=order, lowercase=lowercase)
    write_arpa(model, model_out)
    report = model.score_sentences(sentences)
    if as_json:
        counts = {str(k): n for k, n in enumerate(model.counts(), start=1)}
        typer.echo(json.dumps({"model": str(model_out), "order": order, "ngrams": counts, "train": report.as_dict()}))
        return
    table = Table(title=f"{order}-gram modified Kneser-Ney")
    for col in ("order", "n-grams", "D1", "D2", "D3+"):
        table.add_column(col, justify="right")
    for k, n in enumerate(model.counts(), start=1):
        d = model.meta.get(f"discounts.{k}", ",,").split(",")
        table.add_row(str(k), f"{n:,}", *(f"{float(x):.3f}" if x else "" for x in d))
    out.print(table)
    out.print(
        f"train perplexity {report.perplexity:.2f} ({report.words:,} words incl. </s>, {report.sentences:,} sentences)"
    )
    out.print(f"wrote {model_out}")


@app.command("score")
def score_cmd(
    texts: TextsArg,
    model_path: Annotated[Path, typer.Option("--model", "-m", help="An ARPA file (from kelm or any other tool).")],
    as_json: JsonOpt = False,
) -> None:
    """Perplexity of text under a model (per word incl. </s>, OOV words scored as <unk>, as KenLM does)."""
    from kelm.lm import read_arpa, read_sentences

    model = read_arpa(model_path)
    report = model.score_sentences(read_sentences(texts, lowercase=model.lowercase))
    if as_json:
        typer.echo(json.dumps({"model": str(model_path), "order": model.order, **report.as_dict()}))
        return
    share = 100.0 * report.oov / max(report.words, 1)
    out.print(f"perplexity {report.perplexity:.2f} ({report.words:,} words incl. </s>, {report.sentences:,} sentences)")
    out.print(f"OOV {report.oov:,} ({share:.2f}%); perplexity without OOV {report.perplexity_without_oov:.2f}")
