"""The sections of a diagnosis (drift, importance, interference, representation, output): their
titles and figures, which were computed or not and why, and the ranking the report's tables and
the terminal summary share."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TypeVar

from retain.records.diagnose import DiagnoseRecord

__all__ = ["SECTIONS", "TOP", "computed_sections", "not_computed", "ranked", "share"]

#: Each diagnostic's section: its title and the figures shown in it, in report order.
SECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "drift": ("Parameter drift", ("drift",)),
    "importance": ("Fisher importance", ("importance_layers", "importance_scatter")),
    "interference": ("Gradient interference", ("interference",)),
    "representation": ("Representational shift", ("representation",)),
    "output": ("Output-distribution shift", ("output_kl",)),
}

#: Rows of the top-layers and top-modules tables.
TOP = 10
_Row = TypeVar("_Row")


def ranked(rows: Iterable[_Row], key: Callable[[_Row], float], reverse: bool) -> list[_Row]:
    """``rows`` sorted by ``key`` (descending when ``reverse``), first :data:`TOP`; rows where
    it is undefined (``NaN``) are left out."""
    defined = [r for r in rows if math.isfinite(key(r))]
    return sorted(defined, key=key, reverse=reverse)[:TOP]


def share(count: int, total: int) -> float:
    """``count / total``, ``NaN`` when ``total`` is 0."""
    return count / total if total > 0 else math.nan


def computed_sections(record: DiagnoseRecord) -> list[str]:
    """The diagnostics with results, in :data:`SECTIONS` order."""
    sections = {
        "drift": record.drift,
        "importance": record.importance,
        "interference": record.interference,
        "representation": record.representation,
        "output": record.output,
    }
    return [name for name in SECTIONS if sections[name] is not None]


def not_computed(record: DiagnoseRecord) -> dict[str, str]:
    """``{diagnostic: reason}`` for every diagnostic without results, ``skipped`` first."""
    reasons = dict(record.skipped)
    computed = computed_sections(record)
    for name in SECTIONS:
        if name not in computed and name not in reasons:
            reasons[name] = "not requested"
    return reasons
