"""The training engine: one loop (`Trainer`) for every task, strategy and world size.

``run_training(config, out_dir)`` is the library entry the ``kelm train`` command calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# kelm.config pulls in kelm.train.config; importing it first keeps that order whichever module
# a caller imports first.
import kelm.config  # noqa: F401


def run_training(
    config: dict[str, Any] | str | Path | None,
    out_dir: str | Path,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train from a config (a dict shaped like a config file, or a TOML path); returns the summary
    also written to ``out_dir/metrics.json``."""
    from kelm.train.run import run_training as _run

    return _run(config, out_dir, resume=resume, overrides=overrides)


__all__ = ["run_training"]
