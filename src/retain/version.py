"""retain's version (the installed distribution's, ``0.0.0+unknown`` from an uninstalled tree)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("retain")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
