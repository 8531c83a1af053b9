"""Safetensors files with a string metadata header: atomic writes, reads with one-line errors.

Used for strategy state and for EWC/L2-SP anchor files; nothing is ever unpickled.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from retain.atomic_files import file_mode
from retain.errors import RetainError, write_failure

__all__ = ["read_safetensors", "write_safetensors"]


def write_safetensors(
    path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str]
) -> Path:
    """Write CPU copies of ``tensors`` and ``metadata`` to ``path``: a temporary file in the same
    folder, renamed into place, so readers never see half a file. The file gets the ordinary mode
    of a new file (``0o666`` less the umask), like the JSON written beside it."""
    path = Path(path)
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
    except OSError as exc:
        raise write_failure(path, exc) from exc
    os.close(fd)
    try:
        save_file(cpu, tmp, metadata=metadata)
        os.chmod(tmp, file_mode())  # mkstemp makes 0600
        os.replace(tmp, path)
    except (SafetensorError, OSError) as exc:  # a full disk, a file-size limit
        raise write_failure(path, exc) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_safetensors(path: str | Path, what: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors (on CPU) and metadata of ``path``; ``what`` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise RetainError(f"{what} file {str(path)!r} does not exist; check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise RetainError(f"{str(path)!r} is not a safetensors file: {exc}") from exc
    return tensors, metadata
