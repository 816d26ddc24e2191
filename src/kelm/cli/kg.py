"""`kelm kg`: import, inspect, query and export knowledge graphs in a graph store."""

import typer

app = typer.Typer(help="Knowledge graphs in a graph store.", no_args_is_help=True)
