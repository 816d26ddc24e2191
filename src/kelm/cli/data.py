"""`kelm data`: the data-set registry."""

import typer

app = typer.Typer(help="List, inspect and prepare named data sets.", no_args_is_help=True)
