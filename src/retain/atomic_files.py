"""Files that appear whole or not at all: atomic bytes, text and strict JSON.

Each file is written into a hidden temporary sibling (``.<name>.<random>``) and renamed into
place, so a crash or Ctrl-C never leaves a half-written file; the result gets the ordinary mode
of a new file (``0o666`` less the umask), like the files around it. The ground floor of retain's
file handling: every layer may use it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from retain.errors import write_failure

__all__ = [
    "file_mode",
    "to_jsonable",
    "write_bytes",
    "write_json",
    "write_text",
]


def file_mode(folder: bool = False) -> int:
    """The mode a new file (``0o666``) or folder (``0o777``) gets under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


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
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename).

    A full disk, a file-size limit or a permission the file system refuses is a
    :class:`~retain.errors.RetainError` naming ``path`` (:func:`~retain.errors.write_failure`).
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise write_failure(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, file_mode())  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_failure(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, UTF-8 (:func:`write_bytes`)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented, strict JSON (no NaN) atomically."""
    write_text(path, json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")
