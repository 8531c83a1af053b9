"""Errors a user can act on.

Every mistake a user can make (a wrong path, an unknown name, a dataset without the expected column)
raises :class:`RetainError` with one line that names the bad input and the fix. The CLI prints that
line and exits with code 2; library users catch it like any ``ValueError``.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

__all__ = ["MissingAssetError", "RetainError", "UnknownNameError", "write_failure"]


class RetainError(ValueError):
    """A user mistake: the message names the bad input and how to fix it."""


class UnknownNameError(RetainError, KeyError):
    """A name that is not in a registry (``KeyError`` too, for mapping-style callers)."""

    def __str__(self) -> str:
        # KeyError quotes its message; we want the plain sentence.
        return str(self.args[0]) if self.args else ""


class MissingAssetError(RetainError):
    """An offline asset whose package is not installed; the message gives the install command."""


_REASONS = {
    errno.ENOSPC: "no space left on the device; free some space",
    errno.EDQUOT: "the disk quota is exceeded; free some space",
    errno.EFBIG: "the file is larger than this file system or the file-size limit allows",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
}


def write_failure(path: str | Path, exc: BaseException) -> RetainError:
    """One line for a file that could not be written: the path, the cause in words and a fix.

    ``exc`` is an :class:`OSError` or an error that carries one in its text (safetensors writes
    ``... (os error 28)``).
    """
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None and (found := re.search(r"os error (\d+)", str(exc))):
        code = int(found.group(1))
    reason = _REASONS.get(code or -1) or (os.strerror(code) if code else str(exc))
    return RetainError(f"cannot write {str(path)!r}: {reason}; choose another --out or retry")
