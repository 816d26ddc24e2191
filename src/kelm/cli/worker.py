"""A worker process of a launched job (`kelm.train.launch`): the kelm command line, quiet on ranks
other than 0, handing a `KelmError` to the launching agent instead of printing a traceback."""

from __future__ import annotations

import sys

from kelm.errors import KelmError
from kelm.train.launch import report_worker_error


def worker_main(argv: list[str]) -> int:
    """A worker: the kelm command line, quiet on ranks other than 0."""
    import warnings

    import click

    from kelm.cli import app
    from kelm.train.distributed import env_rank

    rank = env_rank()
    if rank != 0:
        warnings.filterwarnings("ignore")
    try:
        app(args=argv, standalone_mode=False)
    except KelmError as err:
        report_worker_error(err, rank)
        return err.exit_code
    except click.exceptions.Exit as err:
        return err.exit_code
    except click.ClickException as err:
        if rank == 0:
            err.show()
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
