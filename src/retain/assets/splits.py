"""Normalise, deduplicate and split datasets with a fixed seed.

Every dataset retain builds (registry entries, local files, ``datasets`` names) goes through here,
so the same guarantees hold everywhere:

- empty texts are dropped;
- rows are deduplicated on :func:`normalize_text` (strip, collapse whitespace, casefold) *before*
  splitting, keeping the first occurrence, so no text appears in both train and test;
- a normalised text that occurs with two different labels is dropped entirely (we cannot tell which
  label is right, and keeping either would put label noise into one split);
- the split is stratified by label and fixed by ``seed``
  (``sklearn.model_selection.train_test_split``).

Images follow the same rules with the raw pixel bytes as the key.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import datasets
import numpy as np

from retain.errors import RetainError

__all__ = [
    "dedupe_indices",
    "image_dict",
    "labelled_text_dict",
    "normalize_text",
    "resplit",
    "split_indices",
    "unlabelled_text_dict",
]


def normalize_text(text: str) -> str:
    """The form used to spot duplicates: whitespace stripped and collapsed, then casefolded.

    >>> normalize_text("  Free  ENTRY\\n now ")
    'free entry now'
    """
    return " ".join(text.split()).casefold()


def _text_key(text: str | None) -> str | None:
    """The dedupe key of a text, ``None`` for a missing or blank one (dropped)."""
    return normalize_text(text) or None if text else None


def dedupe_indices(
    keys: Sequence[Hashable | None], labels: Sequence[int] | None = None
) -> list[int]:
    """Indices of the rows to keep: the first row of each key, skipping ``None`` (empty) keys.

    With ``labels``, a key seen with two different labels is dropped everywhere it occurs.

    >>> dedupe_indices(["a", "b", "a", None, "c", "c"], [0, 1, 0, 1, 0, 1])
    [0, 1]
    """
    first: dict[Hashable, int] = {}
    conflicting: set[Hashable] = set()
    for i, key in enumerate(keys):
        if key is None:
            continue
        if key not in first:
            first[key] = i
        elif labels is not None and labels[first[key]] != labels[i]:
            conflicting.add(key)
    return [i for key, i in first.items() if key not in conflicting]


def _check_test_size(test_size: float) -> None:
    if not 0.0 <= test_size < 1.0:
        raise RetainError(
            f"test_size must be at least 0 and below 1 (0.2 = 20 % held out); got {test_size}"
        )


def split_indices(
    n: int, labels: Sequence[int] | None, *, test_size: float, seed: int
) -> tuple[list[int], list[int]]:
    """Positions ``0..n-1`` split into (train, test), stratified by ``labels`` when possible.

    Stratification needs every class to have at least two rows and both splits to be at least as
    large as the number of classes; otherwise (tiny local files) it is a plain seeded shuffle.
    ``test_size`` 0 keeps every row for training (an empty test split).
    """
    from sklearn.model_selection import train_test_split  # deferred: sklearn takes ~1 s to import

    _check_test_size(test_size)
    if test_size == 0:
        return list(range(n)), []
    if n < 2:
        raise RetainError(
            f"only {n} usable row(s) after dropping empty and duplicate texts; need at least 2 "
            "to make a train and a test split"
        )
    stratify: np.ndarray[Any, np.dtype[np.int64]] | None = None
    if labels is not None:
        y = np.asarray(labels, dtype=np.int64)
        counts = np.unique(y, return_counts=True)[1]
        n_test = int(np.ceil(test_size * n))
        if counts.min() >= 2 and min(n_test, n - n_test) >= len(counts):
            stratify = y
    train, test = train_test_split(
        np.arange(n), test_size=test_size, random_state=seed, shuffle=True, stratify=stratify
    )
    return [int(i) for i in train], [int(i) for i in test]


def _take(columns: Mapping[str, Sequence[Any]], rows: Sequence[int]) -> dict[str, list[Any]]:
    return {name: [values[i] for i in rows] for name, values in columns.items()}


def _parts(
    columns: Mapping[str, Sequence[Any]],
    train: Sequence[int],
    test: Sequence[int],
    features: datasets.Features,
) -> datasets.DatasetDict:
    """``train`` and ``test`` rows of ``columns``; no ``test`` split when it has no rows."""
    parts = {"train": train, "test": test} if test else {"train": train}
    return datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict(_take(columns, rows), features=features)
            for name, rows in parts.items()
        }
    )


def labelled_text_dict(
    texts: Sequence[str | None],
    labels: Sequence[int],
    label_names: Sequence[str],
    *,
    test_size: float = 0.2,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Deduplicate and split labelled texts into ``train``/``test`` with ``text`` and ``label``.

    ``labels`` are indices into ``label_names``; the ``label`` column is a ``ClassLabel`` with them.
    """
    keep = dedupe_indices([_text_key(t) for t in texts], labels)
    kept_labels = [labels[i] for i in keep]
    train, test = split_indices(len(keep), kept_labels, test_size=test_size, seed=seed)
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(label_names))}
    )
    columns: dict[str, list[Any]] = {"text": [texts[i] for i in keep], "label": kept_labels}
    return _parts(columns, train, test, features)


def unlabelled_text_dict(
    texts: Sequence[str | None], *, test_size: float = 0.2, seed: int = 0
) -> datasets.DatasetDict:
    """Deduplicate and split plain texts into ``train``/``test`` with a single ``text`` column."""
    keep = dedupe_indices([_text_key(t) for t in texts])
    train, test = split_indices(len(keep), None, test_size=test_size, seed=seed)
    features = datasets.Features({"text": datasets.Value("string")})
    columns = {"text": [texts[i] for i in keep]}
    return _parts(columns, train, test, features)


def image_dict(
    pixels: np.ndarray[Any, np.dtype[np.float32]],
    labels: Sequence[int],
    label_names: Sequence[str],
    *,
    test_size: float = 0.2,
    seed: int = 0,
) -> datasets.DatasetDict:
    """Deduplicate identical images and split into ``train``/``test`` with ``pixels`` and ``label``.

    ``pixels`` is ``(n, d)`` float32 in [0, 1]; a row becomes a fixed-length list of ``d`` floats.
    """
    flat = np.ascontiguousarray(pixels, dtype=np.float32).reshape(len(pixels), -1)
    keep = dedupe_indices([row.tobytes() for row in flat], labels)
    kept_labels = [int(labels[i]) for i in keep]
    train, test = split_indices(len(keep), kept_labels, test_size=test_size, seed=seed)
    features = datasets.Features(
        {
            "pixels": datasets.Sequence(datasets.Value("float32"), length=flat.shape[1]),
            "label": datasets.ClassLabel(names=list(label_names)),
        }
    )
    kept = np.asarray(keep, dtype=np.int64)

    def part(rows: list[int]) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {"pixels": flat[kept[rows]], "label": [kept_labels[i] for i in rows]},
            features=features,
        )

    return datasets.DatasetDict({"train": part(train), "test": part(test)})


def resplit(data: datasets.DatasetDict, *, test_size: float, seed: int) -> datasets.DatasetDict:
    """Pool an already-deduplicated ``train``/``test`` pair and split it again with another seed.

    Rows were deduplicated across both splits when ``data`` was built, so the new split is still
    disjoint. A dict without both splits (``general_text`` is test-only) is returned unchanged.
    """
    if set(data) != {"train", "test"}:
        return data
    pooled = datasets.concatenate_datasets([data["train"], data["test"]])
    labels = list(pooled["label"]) if "label" in pooled.column_names else None
    train, test = split_indices(len(pooled), labels, test_size=test_size, seed=seed)
    return datasets.DatasetDict({"train": pooled.select(train), "test": pooled.select(test)})
