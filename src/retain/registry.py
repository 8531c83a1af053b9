"""One generic registry with aliases and "did you mean ...?" errors.

Models, datasets, probes and suites are each a :class:`Registry`; entries are registered next to
their implementation, and ``retain ls`` lists every registry with one line per entry.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from retain.errors import UnknownNameError

__all__ = ["Registry", "RegistryEntry"]

T = TypeVar("T")


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """A registered object with its canonical name, aliases and a one-line description."""

    name: str
    value: T
    description: str
    aliases: tuple[str, ...] = field(default=())


class Registry(Generic[T]):
    """Named objects of one kind (``kind`` is used in messages: ``unknown model 'x'``).

    >>> r: Registry[int] = Registry("number")
    >>> _ = r.register("one", 1, "the first", aliases=("uno",))
    >>> r.get("uno")
    1
    """

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, RegistryEntry[T]] = {}
        self._aliases: dict[str, str] = {}
        # Imports the modules that register built-in entries, on first lookup (avoids cycles).
        self._loader = loader

    def _load(self) -> None:
        if self._loader is not None:
            loader, self._loader = self._loader, None
            loader()

    def register(self, name: str, value: T, description: str, aliases: tuple[str, ...] = ()) -> T:
        """Add ``value`` under ``name`` (and its aliases); returns ``value`` for decorator use."""
        for key in (name, *aliases):
            if key in self._aliases:
                raise ValueError(f"{self.kind} name {key!r} is registered twice")
        self._entries[name] = RegistryEntry(name, value, description, tuple(aliases))
        for key in (name, *aliases):
            self._aliases[key] = name
        return value

    def __contains__(self, name: object) -> bool:
        self._load()
        return isinstance(name, str) and name.lower() in self._aliases

    def __iter__(self) -> Iterator[RegistryEntry[T]]:
        self._load()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def names(self) -> list[str]:
        """Canonical names, sorted."""
        self._load()
        return sorted(self._entries)

    def entry(self, name: str) -> RegistryEntry[T]:
        """The entry for ``name`` or an alias; unknown names raise :class:`UnknownNameError`."""
        self._load()
        canonical = self._aliases.get(name.lower())
        if canonical is None:
            raise UnknownNameError(self.unknown_message(name))
        return self._entries[canonical]

    def get(self, name: str) -> T:
        """The value registered under ``name`` or an alias."""
        return self.entry(name).value

    def unknown_message(self, name: str) -> str:
        """``unknown model 'x'; did you mean 'y'? (see: retain ls)``."""
        close = difflib.get_close_matches(name.lower(), list(self._aliases), n=1, cutoff=0.5)
        hint = f"; did you mean {self._aliases[close[0]]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (see: retain ls)"
