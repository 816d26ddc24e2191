"""The `kelm` command line. Commands are thin: they parse flags and call library functions."""

from __future__ import annotations

import sys

import click
import typer
from rich.markup import escape

from kelm import __version__
from kelm.cli import compress as compress_cmd
from kelm.cli import data as data_cmd
from kelm.cli import demo as demo_cmd
from kelm.cli import extract as extract_cmd
from kelm.cli import federate as federate_cmd
from kelm.cli import finetune as finetune_cmd
from kelm.cli import fuse as fuse_cmd
from kelm.cli import kg as kg_cmd
from kelm.cli import kgc as kgc_cmd
from kelm.cli import kge as kge_cmd
from kelm.cli import kgqa as kgqa_cmd
from kelm.cli import link as link_cmd
from kelm.cli import moe as moe_cmd
from kelm.cli import ngram as ngram_cmd
from kelm.cli import plot as plot_cmd
from kelm.cli import predict as predict_cmd
from kelm.cli import pretrain as pretrain_cmd
from kelm.cli import reason as reason_cmd
from kelm.cli import serve as serve_cmd
from kelm.cli import train as train_cmd
from kelm.errors import KelmError
from kelm.progress import console, install_log_lines

try:  # typer >= 0.29 ships its own copy of click, with its own exception classes
    from typer._click.exceptions import ClickException as _VendoredClickException
except ImportError:  # pragma: no cover - older typer raises click's own
    _VendoredClickException = click.ClickException

_USAGE_ERRORS = (click.ClickException, _VendoredClickException)
_EXITS = (click.exceptions.Exit, typer.Exit)
_ABORTS = (click.exceptions.Abort, typer.Abort)

app = typer.Typer(
    name="kelm",
    help="Train language models and knowledge graphs together.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data_cmd.app, name="data")
app.add_typer(kg_cmd.app, name="kg")
app.add_typer(kge_cmd.app, name="kge")
app.add_typer(moe_cmd.app, name="moe")
app.add_typer(kgc_cmd.app, name="kgc")
app.add_typer(kgqa_cmd.app, name="kgqa")
app.add_typer(ngram_cmd.app, name="ngram")
app.add_typer(fuse_cmd.app, name="fuse")
app.add_typer(reason_cmd.app, name="reason")
app.command("demo")(demo_cmd.demo)
app.command("train")(train_cmd.train)
app.command("plot")(plot_cmd.plot)
app.command("finetune")(finetune_cmd.finetune)
app.command("predict")(predict_cmd.predict)
app.command("pretrain")(pretrain_cmd.pretrain)
app.command("link")(link_cmd.link)
app.command("extract")(extract_cmd.extract)
app.command("serve")(serve_cmd.serve)
app.command("compress")(compress_cmd.compress)
app.command("federate")(federate_cmd.federate)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kelm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """kelm: knowledge graphs and language models, one framework."""
    install_log_lines()


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes become one line on stderr and a non-zero exit, never a traceback."""
    try:
        app(args=argv, standalone_mode=False)
    except KelmError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return err.exit_code
    except _EXITS as err:
        return err.exit_code
    except _USAGE_ERRORS as err:
        err.show()
        return err.exit_code
    except _ABORTS:
        console.print("aborted")
        return 130
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    return 0


def run() -> None:
    sys.exit(main())
