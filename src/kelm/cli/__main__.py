"""``python -m kelm.cli``: the same as the ``kelm`` command."""

from kelm.cli import run

run()
