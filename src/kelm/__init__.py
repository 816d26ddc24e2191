"""kelm: language models and knowledge graphs trained together."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kelm")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+local"

from kelm.errors import KelmError  # noqa: E402

__all__ = ["KelmError", "__version__"]
