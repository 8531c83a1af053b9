"""Errors a user can act on.

Every mistake a user can make (a wrong path, an unknown name, a dataset without the expected column)
raises :class:`RetainError` with one line that names the bad input and the fix. The CLI prints that
line and exits with code 2; library users catch it like any ``ValueError``.
"""

from __future__ import annotations

__all__ = ["MissingAssetError", "RetainError", "UnknownNameError"]


class RetainError(ValueError):
    """A user mistake: the message names the bad input and how to fix it."""


class UnknownNameError(RetainError, KeyError):
    """A name that is not in a registry (``KeyError`` too, for mapping-style callers)."""

    def __str__(self) -> str:
        # KeyError quotes its message; we want the plain sentence.
        return str(self.args[0]) if self.args else ""


class MissingAssetError(RetainError):
    """An offline asset whose package is not installed; the message gives the install command."""
