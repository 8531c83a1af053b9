"""Datasets that are not in the registry: local files and Hugging Face ``datasets`` names.

A local ``.csv``, ``.tsv``, ``.json``, ``.jsonl`` or ``.txt`` file (one text a line, no labels) is
read with the ``datasets`` library; a folder is read with ``datasets.load_from_disk`` when it was
written by ``save_to_disk`` and with ``datasets.load_dataset`` otherwise; any other name goes to
``datasets.load_dataset`` (offline it only finds what is already in the local cache).

Whatever the source, the result has the same shape as a registry dataset: ``train`` and ``test``
splits, a ``text`` column and, when labelled, a ``label`` ``ClassLabel`` column. The rows of every
split the source had are pooled, deduplicated and split again with the seed (see
:mod:`retain.assets.splits`), so a ``datasets`` name's own train/test boundary is not kept; that is
what guarantees no text in both splits.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets

from retain.assets.splits import labelled_text_dict, unlabelled_text_dict
from retain.errors import RetainError

__all__ = [
    "SUPPORTED_SUFFIXES",
    "NotAvailableOffline",
    "encode_labels",
    "exception_line",
    "load_datasets_name",
    "load_local_path",
    "looks_like_path",
    "tables_to_dict",
]

#: File types read by :func:`load_local_path`, with the ``datasets`` builder and its options.
_READERS: dict[str, tuple[str, dict[str, str]]] = {
    ".csv": ("csv", {}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".txt": ("text", {}),
}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(sorted(_READERS))

# Suffixes that mark a name as meant to be a file even when it is not there.
_FILE_LIKE_SUFFIXES = {
    *SUPPORTED_SUFFIXES,
    *(".arrow", ".bz2", ".gz", ".ndjson", ".parquet", ".xls", ".xlsx", ".xz", ".zip"),
}
_SPLIT_ORDER = ("train", "validation", "test")


class NotAvailableOffline(Exception):  # noqa: N818 (an outcome, not a user error to show as is)
    """``datasets.load_dataset(name)`` failed; ``reason`` is a short cause worth showing, if any."""

    def __init__(self, name: str, reason: str | None = None) -> None:
        super().__init__(name, reason)
        self.name = name
        self.reason = reason


def looks_like_path(name: str) -> bool:
    """Whether ``name`` is meant as a file or folder (a known data suffix or a path prefix).

    ``owner/name`` is a ``datasets`` name, not a path, so a ``/`` alone does not count.
    """
    return name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or (
        Path(name).suffix.lower() in _FILE_LIKE_SUFFIXES
    )


def encode_labels(
    values: Sequence[object], feature: object, *, where: str, column: str
) -> tuple[list[int | None], list[str]]:
    """Class ids (``None`` where the label is missing) and the class names for a label column.

    A ``ClassLabel`` column keeps its names (ids outside them, such as -1, count as missing);
    non-negative integers below 1000 keep their value as the id and are named ``"0"``, ``"1"``, ...;
    any other values (strings, negative numbers) become classes named by their sorted values.
    Integers mixed with other values (``0``, ``1``, ``x``, ``1.5``: a typo or a stray row, most
    likely) are accepted, each value a class, with a warning naming them.
    """
    if isinstance(feature, datasets.ClassLabel):
        names = [str(n) for n in feature.names]
        ids: list[int | None] = [
            v if isinstance(v, int) and 0 <= v < len(names) else None for v in values
        ]
        return ids, names
    cleaned: list[object] = [_clean_label(v, where=where, column=column) for v in values]
    present = {v for v in cleaned if v is not None}
    numbers = sorted(v for v in present if isinstance(v, int) and not isinstance(v, bool))
    if present and len(numbers) == len(present) and numbers[0] >= 0 and numbers[-1] < 1000:
        ids = [v if isinstance(v, int) else None for v in cleaned]
        return ids, [str(i) for i in range(numbers[-1] + 1)]
    ordered: list[object] = (
        list(numbers) if len(numbers) == len(present) else sorted(present, key=str)
    )
    _warn_mixed(ordered, where=where, column=column)
    index = {v: i for i, v in enumerate(ordered)}
    return [None if v is None else index[v] for v in cleaned], [str(v) for v in ordered]


_INTEGER = re.compile(r"[+-]?\d+")


def _warn_mixed(classes: Sequence[object], *, where: str, column: str) -> None:
    """Warn when some classes are integers (``1`` or ``"1"``) and others are not."""
    integral = [
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, str) and _INTEGER.fullmatch(v.strip()) is not None)
        for v in classes
    ]
    if not any(integral) or all(integral):
        return
    shown = ", ".join(repr(str(v)) for v in classes[:8]) + (", ..." if len(classes) > 8 else "")
    warnings.warn(
        f"labels of {where} mix integers with other values ({shown}): {len(classes)} classes; "
        f"check the label column {column!r}",
        UserWarning,
        stacklevel=3,
    )


def _clean_label(value: object, *, where: str, column: str) -> object:
    """``None`` for a missing label (None, "", NaN); integral floats (CSV with gaps) become ints."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if not value.is_integer():
            raise RetainError(
                f"{where}: label column {column!r} holds non-integer numbers (e.g. {value}); "
                "a label must be a class name or an integer class id (pass label_column= "
                "naming such a column)"
            )
        return int(value)
    if isinstance(value, (list, dict)):
        raise RetainError(
            f"{where}: label column {column!r} holds {type(value).__name__}s, not class labels "
            "(pass label_column= naming a column of class names or ids)"
        )
    return None if value is None or value == "" else value


def _missing_column(where: str, column: str, columns: Sequence[str], option: str) -> RetainError:
    return RetainError(
        f"{where} has no column {column!r}; its columns are: {', '.join(columns)} "
        f"(pass {option}= naming the right one)"
    )


def tables_to_dict(
    tables: Mapping[str, datasets.Dataset],
    *,
    where: str,
    text_column: str | None,
    label_column: str | None,
    test_size: float,
    seed: int,
) -> datasets.DatasetDict:
    """Pool ``tables`` (splits of one source), then deduplicate and split them with the seed.

    ``label_column=None`` means "``label`` if there is one": without it the result is plain text.
    """
    ordered = sorted(tables, key=lambda s: (*_SPLIT_ORDER, s).index(s))
    columns = tables[ordered[0]].column_names
    text_col = text_column or "text"
    if text_col not in columns:
        raise _missing_column(where, text_col, columns, "text_column")
    label_col = label_column or "label"
    if label_col not in columns:
        if label_column is not None:
            raise _missing_column(where, label_col, columns, "label_column")
        label_col = ""
    texts: list[str | None] = []
    raw_labels: list[object] = []
    for split in ordered:
        table = tables[split]
        texts.extend(None if t is None else str(t) for t in table[text_col])
        if label_col:
            raw_labels.extend(table[label_col])
    if not label_col:
        return unlabelled_text_dict(texts, test_size=test_size, seed=seed)
    feature = tables[ordered[0]].features[label_col]
    ids, names = encode_labels(raw_labels, feature, where=where, column=label_col)
    _warn_dropped(texts, ids, where=where, text_column=text_col, label_column=label_col)
    rows = [(text, label) for text, label in zip(texts, ids, strict=True) if label is not None]
    return labelled_text_dict(
        [text for text, _ in rows],
        [label for _, label in rows],
        names,
        test_size=test_size,
        seed=seed,
    )


def _warn_dropped(
    texts: Sequence[str | None],
    ids: Sequence[int | None],
    *,
    where: str,
    text_column: str,
    label_column: str,
) -> None:
    """Say how many rows are left out for a missing label or an empty text (never silently)."""
    no_label = sum(1 for i in ids if i is None)
    no_text = sum(
        1 for t, i in zip(texts, ids, strict=True) if i is not None and not (t or "").strip()
    )
    parts = [f"{n} without a {c!r}" for n, c in ((no_label, label_column), (no_text, text_column))]
    dropped = [part for part, n in zip(parts, (no_label, no_text), strict=True) if n]
    if dropped:
        warnings.warn(
            f"{where}: {' and '.join(dropped)} of {len(texts)} rows are left out",
            UserWarning,
            stacklevel=3,
        )


def exception_line(exc: BaseException) -> str:
    """The first line of a library's error (at most 200 characters), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _read_file(path: Path, shown: str) -> dict[str, datasets.Dataset]:
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise RetainError(
            f"{shown}: unsupported file type {path.suffix or '(none)'!r}; supported: "
            f"{', '.join(SUPPORTED_SUFFIXES)} (or a folder written by datasets' save_to_disk)"
        )
    builder, options = _READERS[suffix]
    try:
        loaded = datasets.load_dataset(builder, data_files=str(path), **options)
    except Exception as exc:  # datasets raises many types for a malformed file
        reason = exception_line(exc)
        raise RetainError(f"could not read {shown} as {suffix[1:]}: {reason}") from exc
    return _as_tables(loaded)


def _as_tables(loaded: object) -> dict[str, datasets.Dataset]:
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded)
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    raise RetainError(f"expected a Dataset or DatasetDict, got {type(loaded).__name__}")


def load_local_path(
    name: str,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    test_size: float = 0.2,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Load an existing local file or folder (see the module docstring); ``name`` as given."""
    path = Path(name).expanduser()
    if not path.exists():
        raise RetainError(f"no such file: {name!r}")
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            tables = _as_tables(datasets.load_from_disk(str(path)))
        else:
            try:
                tables = _as_tables(datasets.load_dataset(str(path)))
            except Exception as exc:
                raise RetainError(
                    f"could not read the folder {name!r} with datasets.load_dataset: "
                    f"{str(exc).strip()[:200]}"
                ) from exc
    else:
        tables = _read_file(path, name)
    return tables_to_dict(
        tables,
        where=name,
        text_column=text_column,
        label_column=label_column,
        test_size=test_size,
        seed=seed,
    )


def load_datasets_name(
    name: str,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    test_size: float = 0.2,
    seed: int = 0,
) -> datasets.DatasetDict:
    """``datasets.load_dataset(name)``, all splits pooled and re-split (see the module docstring).

    Raises :class:`NotAvailableOffline` when ``datasets`` cannot provide ``name``; ``reason`` is set
    only when the cause is not simply "not found" (a missing config name, for instance).
    """
    try:
        loaded = datasets.load_dataset(name)
    except (ConnectionError, FileNotFoundError) as exc:
        raise NotAvailableOffline(name) from exc
    except Exception as exc:  # e.g. ValueError for a missing config name
        text = str(exc).strip()
        raise NotAvailableOffline(name, text.splitlines()[0][:200] if text else None) from exc
    return tables_to_dict(
        _as_tables(loaded),
        where=name,
        text_column=text_column,
        label_column=label_column,
        test_size=test_size,
        seed=seed,
    )
