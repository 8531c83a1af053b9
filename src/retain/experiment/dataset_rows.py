"""A dataset split's rows as a config asks for them, with one-line errors naming the setting:
a split that is not there, a count larger than the split (a warning), a missing column."""

from __future__ import annotations

import warnings
from typing import Any

from retain.errors import RetainError

__all__ = ["require_columns", "rows_of"]


def rows_of(data: Any, split: str, n: int | None, where: str) -> Any:
    """The first ``n`` rows of ``data[split]`` (all for None); ``where`` names the setting."""
    if split not in data:
        raise RetainError(f"{where}: dataset has no {split!r} split (it has {sorted(data)})")
    rows = data[split]
    if n is not None and n > len(rows):
        warnings.warn(
            f"{where}: asked for {n} {split} examples but the dataset has {len(rows)}; using "
            f"all {len(rows)}",
            UserWarning,
            stacklevel=2,
        )
    return rows if n is None else rows.select(range(min(n, len(rows))))


def require_columns(rows: Any, needed: list[str], where: str, dataset: str) -> None:
    """Refuse ``rows`` without every column in ``needed``."""
    missing = [c for c in needed if c not in rows.column_names]
    if missing:
        raise RetainError(
            f"{where}: dataset {dataset!r} has no column {missing[0]!r} (it has "
            f"{rows.column_names}); set text_column/label_column"
        )
