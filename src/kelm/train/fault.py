"""Fault injection, a testing hook for the restart and atomicity tests.

Set ``KELM_FAULT_STEP=N`` and the process of rank ``KELM_FAULT_RANK`` (default 0) kills itself
with SIGKILL at step ``N``: right after that optimizer step (``KELM_FAULT_AT=step``, the
default), or while writing the checkpoint of step ``N``, after its files are written and before
it is committed (``KELM_FAULT_AT=checkpoint``). The hook fires only in the first attempt of a
job (``TORCHELASTIC_RESTART_COUNT`` unset or 0), so a restarted job runs through.
"""

from __future__ import annotations

import os
import signal


def maybe_fail(point: str, step: int, rank: int) -> None:
    """SIGKILL this process if the environment asks for a fault at ``point`` of ``step`` on ``rank``."""
    target = os.environ.get("KELM_FAULT_STEP")
    if not target or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return
    if os.environ.get("KELM_FAULT_AT", "step") != point or int(target) != step:
        return
    if int(os.environ.get("KELM_FAULT_RANK", "0")) != rank:
        return
    os.kill(os.getpid(), signal.SIGKILL)
