"""Experiment configs shipped with retain (``src/retain/configs``, also ``configs/`` in the repo).

``retain run demo`` and ``retain run configs/demo.yaml`` name the same file: a config argument
that is not an existing path is looked up by name among the shipped ones.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from retain.errors import RetainError

__all__ = ["SHIPPED_DIR", "resolve_config_path", "shipped_configs"]

#: The folder of the shipped configs (package data).
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """Shipped configs by name (file stem, sub-folders joined with ``/``), sorted."""
    found = sorted(SHIPPED_DIR.rglob("*.yaml"))
    return {str(p.relative_to(SHIPPED_DIR).with_suffix("")): p for p in found}


def resolve_config_path(name_or_path: str) -> Path:
    """``name_or_path`` as an existing file, else the shipped config of that name.

    >>> resolve_config_path("demo").name
    'demo.yaml'
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    shipped = shipped_configs()
    key = name_or_path.removesuffix(".yaml").removeprefix("configs/").replace("-", "_")
    if key in shipped:
        return shipped[key]
    if path.exists():
        raise RetainError(f"config {name_or_path!r} is a folder; give a YAML file")
    names = ", ".join(shipped) or "none"
    close = difflib.get_close_matches(key.lower(), list(shipped), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise RetainError(
        f"config file {name_or_path!r} does not exist and is no shipped config ({names}); "
        f"{hint}check the path"
    )
