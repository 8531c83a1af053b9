"""Normalisation, deduplication and the seeded split shared by every dataset."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from retain.assets.splits import (
    dedupe_indices,
    image_dict,
    labelled_text_dict,
    normalize_text,
    resplit,
    split_indices,
    unlabelled_text_dict,
)
from retain.errors import RetainError


def test_normalize_text_strips_collapses_and_casefolds() -> None:
    assert normalize_text("  Free\tENTRY \n\n now  ") == "free entry now"
    assert normalize_text("Straße") == normalize_text("STRASSE")
    assert normalize_text(" \n ") == ""


def test_dedupe_keeps_first_drops_empty_and_conflicting() -> None:
    keys = ["a", "b", "a", None, "c", "c", "d"]
    assert dedupe_indices(keys) == [0, 1, 4, 6]
    assert dedupe_indices(keys, [0, 1, 0, 0, 0, 1, 1]) == [0, 1, 6]  # "c" has two labels


def _texts(n: int) -> tuple[list[str | None], list[int]]:
    texts: list[str | None] = [f"Message number {i}" for i in range(n)]
    labels = [i % 3 for i in range(n)]
    return texts, labels


def test_labelled_dict_dedupes_before_splitting() -> None:
    texts, labels = _texts(300)
    texts += ["message NUMBER   7", "", None, "  ", "Message number 8"]  # duplicates and empties
    labels += [labels[7], 0, 1, 2, (labels[8] + 1) % 3]  # "... 8" now has two labels: dropped
    data = labelled_text_dict(texts, labels, ["x", "y", "z"], test_size=0.25, seed=3)
    assert set(data) == {"train", "test"}
    train = [normalize_text(t) for t in data["train"]["text"]]
    test = [normalize_text(t) for t in data["test"]["text"]]
    assert len(train) + len(test) == 299  # 300 - "message number 8"
    assert "message number 8" not in train + test
    assert not set(train) & set(test)
    assert len(test) == 75
    feature = data["train"].features["label"]
    assert isinstance(feature, datasets.ClassLabel)
    assert feature.names == ["x", "y", "z"]
    # stratified: every class keeps its share in the test split
    assert np.bincount(list(data["test"]["label"])).tolist() == [25, 25, 25]


def test_split_is_deterministic_and_depends_on_the_seed() -> None:
    texts, labels = _texts(200)
    a = labelled_text_dict(texts, labels, ["x", "y", "z"], seed=0)
    b = labelled_text_dict(texts, labels, ["x", "y", "z"], seed=0)
    c = labelled_text_dict(texts, labels, ["x", "y", "z"], seed=1)
    assert list(a["test"]["text"]) == list(b["test"]["text"])
    assert list(a["test"]["text"]) != list(c["test"]["text"])


def test_tiny_data_falls_back_to_an_unstratified_split() -> None:
    train, test = split_indices(5, [0, 0, 0, 0, 1], test_size=0.2, seed=0)  # class 1 has one row
    assert sorted(train + test) == [0, 1, 2, 3, 4]
    assert len(test) == 1


def test_split_errors_name_the_problem() -> None:
    with pytest.raises(RetainError, match="need at least 2"):
        split_indices(1, None, test_size=0.2, seed=0)
    with pytest.raises(RetainError, match=r"test_size must be at least 0 and below 1 .*; got 1"):
        split_indices(10, None, test_size=1, seed=0)
    assert split_indices(10, None, test_size=0, seed=0) == (list(range(10)), [])  # all train
    with pytest.raises(RetainError, match="need at least 2"):
        unlabelled_text_dict(["same", "SAME ", "", None])


def test_unlabelled_dict_has_only_text() -> None:
    data = unlabelled_text_dict([f"line {i}" for i in range(50)] + ["line 1", ""], seed=0)
    assert data["train"].column_names == ["text"]
    assert len(data["train"]) + len(data["test"]) == 50


def test_image_dict_dedupes_identical_pixels() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.random((40, 4), dtype=np.float32)
    pixels[10] = pixels[0]  # duplicate, same label: kept once
    pixels[21] = pixels[1]  # duplicate, other label: both dropped
    labels = [i % 2 for i in range(40)]
    labels[10], labels[21] = labels[0], 1 - labels[1]
    data = image_dict(pixels, labels, ["even", "odd"], test_size=0.25, seed=0)
    rows = [np.asarray(r, dtype=np.float32).tobytes() for s in data.values() for r in s["pixels"]]
    assert len(rows) == 37 == len(set(rows))
    assert pixels[1].tobytes() not in rows
    assert data["train"].features["pixels"].length == 4


def test_resplit_keeps_rows_and_disjointness() -> None:
    texts, labels = _texts(100)
    data = labelled_text_dict(texts, labels, ["x", "y", "z"])
    again = resplit(data, test_size=0.5, seed=7)
    assert len(again["test"]) == 50
    assert sorted([*again["train"]["text"], *again["test"]["text"]]) == sorted(
        [*data["train"]["text"], *data["test"]["text"]]
    )
    assert not set(again["train"]["text"]) & set(again["test"]["text"])
    test_only = datasets.DatasetDict({"test": data["test"]})
    assert resplit(test_only, test_size=0.5, seed=7) is test_only
