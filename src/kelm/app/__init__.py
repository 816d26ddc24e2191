"""Applications composed from the layers below: run composition (config → task → engine) and the demo."""

from kelm.app.run import run_training

__all__ = ["run_training"]
