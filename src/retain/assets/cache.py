"""Where converted models and other derived files are cached (never inside the repository).

The cache root is ``$RETAIN_CACHE`` when set, else ``~/.cache/retain``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str) -> Path:
    """``$RETAIN_CACHE/<parts...>`` (default ``~/.cache/retain``), created if missing."""
    root = Path(os.environ.get("RETAIN_CACHE") or Path.home() / ".cache" / "retain")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
