"""Run directories that appear whole or not at all.

Outputs are written into a hidden temporary sibling of the target and renamed into place at the
end, so an error (a bad input found late, a crash, Ctrl-C) never leaves a half-written directory.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from retain.errors import RetainError

__all__ = [
    "check_output_dir",
    "output_directory",
    "to_jsonable",
    "write_bytes",
    "write_json",
    "write_text",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _kind_of(folder: Path) -> str | None:
    try:
        data = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(data.get("kind")) if isinstance(data, dict) else None


def check_output_dir(out: Path, *, overwrite: bool, kind: str | None = None) -> None:
    """Fail early (before any work) if ``out`` cannot be written as a fresh run directory.

    ``overwrite`` replaces only an earlier output of the same ``kind`` (its ``results.json``
    says so): any other non-empty folder is refused, never deleted. The working directory and
    the folders above it are refused too (they cannot be replaced).
    """
    if out.exists() and not out.is_dir():
        raise RetainError(f"output path {str(out)!r} is a file; pass a directory (--out DIR)")
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise RetainError(
            f"--out {str(out)!r} is the working directory or a folder above it; pass a new "
            "folder for the output (e.g. --out diag/)"
        )
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RetainError(
                f"output directory {str(out)!r} already exists and is not empty; "
                "choose another --out or pass --overwrite"
            )
        if kind is not None and _kind_of(out) != kind:
            raise RetainError(
                f"{str(out)!r} is not the output of an earlier retain {kind} (no results.json "
                f"of kind {kind!r}); it is never deleted, even with --overwrite: choose another "
                "--out"
            )
    parent = out.resolve().parent
    if not parent.is_dir():
        raise RetainError(f"parent directory of --out {str(out)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise RetainError(f"cannot write into {str(parent)!r}; choose another --out")


@contextmanager
def output_directory(
    out: Path, *, overwrite: bool = False, kind: str | None = None
) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``out`` only if the block finishes.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with output_directory(root / "run") as tmp:
    ...     _ = (tmp / "results.json").write_text("{}")
    >>> sorted(p.name for p in (root / "run").iterdir())
    ['results.json']
    """
    check_output_dir(out, overwrite=overwrite, kind=kind)
    parent = out.resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; a run directory is an ordinary folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    if out.exists():
        old = parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: NaN and infinities become ``None``, numpy scalars become floats/ints."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (int, str, bool)):
        return value
    return str(value)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, UTF-8 (:func:`write_bytes`)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented, strict JSON (no NaN) atomically."""
    write_text(path, json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")
