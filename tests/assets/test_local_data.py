"""Local files, saved folders and ``datasets`` names through :func:`retain.assets.load_dataset`."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest

from retain.assets.datasets import load_dataset
from retain.assets.local_data import encode_labels, looks_like_path
from retain.assets.splits import normalize_text
from retain.errors import RetainError

REVIEWS = [
    (f"Review number {i} says {'good' if i % 2 else 'bad'} things", i % 2) for i in range(60)
]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub look-ups: a ``datasets`` name fails at once instead of retrying the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def _write_csv(
    path: Path, header: list[str], rows: Sequence[Sequence[object]], sep: str = ","
) -> str:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=sep)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _assert_disjoint(data: datasets.DatasetDict) -> None:
    train = {normalize_text(t) for t in data["train"]["text"]}
    test = {normalize_text(t) for t in data["test"]["text"]}
    assert train
    assert test
    assert not train & test


def test_csv_round_trip_with_string_labels(tmp_path: Path) -> None:
    rows = [(text, "pos" if label else "neg") for text, label in REVIEWS]
    rows += [("  review NUMBER 3 says good   things", "pos"), ("", "neg")]  # duplicate, empty
    path = _write_csv(tmp_path / "reviews.csv", ["text", "label"], rows)
    assert set(load_dataset(path)) == {"train"}  # a user's file is used whole unless asked
    assert len(load_dataset(path)["train"]) == 60
    data = load_dataset(path, test_size=0.2, seed=1)
    assert set(data) == {"train", "test"}
    assert data["train"].column_names == ["text", "label"]
    assert data["train"].features["label"].names == ["neg", "pos"]
    assert len(data["train"]) + len(data["test"]) == 60
    assert len(data["test"]) == 12
    _assert_disjoint(data)
    again = load_dataset(path, test_size=0.2, seed=1)
    assert list(again["test"]["text"]) == list(data["test"]["text"])


def test_custom_columns_and_integer_labels(tmp_path: Path) -> None:
    path = _write_csv(
        tmp_path / "r.tsv",
        ["id", "review", "stars"],
        [(i, text, label) for i, (text, label) in enumerate(REVIEWS)],
        sep="\t",
    )
    data = load_dataset(path, text_column="review", label_column="stars", test_size=0.2)
    assert data["test"].column_names == ["text", "label"]
    assert data["test"].features["label"].names == ["0", "1"]
    _assert_disjoint(data)


def test_jsonl_and_json_array(tmp_path: Path) -> None:
    records = [{"text": text, "label": label, "extra": 1.5} for text, label in REVIEWS]
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    array = tmp_path / "r.json"
    array.write_text(json.dumps(records), encoding="utf-8")
    for path in (jsonl, array):
        data = load_dataset(str(path))
        assert data["train"].column_names == ["text", "label"]
        assert len(data["train"]) == 60


def test_txt_is_plain_text_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text(
        "\n".join([*(f"Line {i} of the notes" for i in range(30)), "", "LINE 0 of the notes"])
    )
    data = load_dataset(str(path), test_size=0.2)
    assert data["train"].column_names == ["text"]
    assert len(data["train"]) + len(data["test"]) == 30
    _assert_disjoint(data)
    with pytest.raises(RetainError, match="has no column 'label'; its columns are: text"):
        load_dataset(str(path), label_column="label")


def test_csv_without_labels_is_plain_text_unless_asked(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "data.csv", ["text", "a"], [(t, 1) for t, _ in REVIEWS])
    assert load_dataset(path)["train"].column_names == ["text"]
    with pytest.raises(RetainError) as info:
        load_dataset(path, label_column="label")
    assert str(info.value) == (
        f"{path} has no column 'label'; its columns are: text, a "
        "(pass label_column= naming the right one)"
    )


def test_missing_text_column_names_the_columns(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "data.csv", ["a", "b", "c"], [(1, 2, 3)])
    with pytest.raises(RetainError) as info:
        load_dataset(path)
    assert str(info.value) == (
        f"{path} has no column 'text'; its columns are: a, b, c "
        "(pass text_column= naming the right one)"
    )


def test_missing_labels_are_dropped_and_fractional_labels_refused(tmp_path: Path) -> None:
    rows = [(text, label if i % 10 else "") for i, (text, label) in enumerate(REVIEWS)]
    data = load_dataset(_write_csv(tmp_path / "gaps.csv", ["text", "label"], rows))
    assert len(data["train"]) == 54
    assert data["train"].features["label"].names == ["0", "1"]
    scores = [(text, 0.25 * label + 0.1) for text, label in REVIEWS]
    with pytest.raises(RetainError, match="holds non-integer numbers"):
        load_dataset(_write_csv(tmp_path / "scores.csv", ["text", "label"], scores))


def test_rows_left_out_are_said(tmp_path: Path) -> None:
    rows = [
        (text if i != 3 else "", label if i % 10 else "") for i, (text, label) in enumerate(REVIEWS)
    ]
    with pytest.warns(UserWarning, match=r"6 without a 'label' and 1 without a 'text' of 60 rows"):
        load_dataset(_write_csv(tmp_path / "gaps.csv", ["text", "label"], rows))


def test_saved_dataset_folder(tmp_path: Path) -> None:
    table = datasets.Dataset.from_dict(
        {"sentence": [t for t, _ in REVIEWS], "label": [lab for _, lab in REVIEWS]},
        features=datasets.Features(
            {
                "sentence": datasets.Value("string"),
                "label": datasets.ClassLabel(names=["bad", "good"]),
            }
        ),
    )
    datasets.DatasetDict(
        {"train": table.select(range(40)), "test": table.select(range(40, 60))}
    ).save_to_disk(str(tmp_path / "saved"))
    data = load_dataset(str(tmp_path / "saved"), text_column="sentence", test_size=0.5)
    assert data["train"].features["label"].names == ["bad", "good"]
    assert len(data["train"]) == len(data["test"]) == 30  # the saved splits are pooled, re-split


def test_missing_file_and_unsupported_type(tmp_path: Path) -> None:
    with pytest.raises(RetainError) as info:
        load_dataset("nope/data.csv")
    assert str(info.value) == "no such file: 'nope/data.csv'"
    odd = tmp_path / "data.xml"
    odd.write_text("<x/>")
    with pytest.raises(
        RetainError, match=r"unsupported file type '\.xml'; supported: \.csv, \.json"
    ):
        load_dataset(str(odd))


def test_unknown_name_suggests_a_registry_name(offline: None) -> None:
    with pytest.raises(RetainError) as info:
        load_dataset("sms_spamm")
    assert str(info.value) == (
        "unknown dataset 'sms_spamm': not a registry name, a local file, or a datasets name "
        "available offline; did you mean 'sms_spam'? (see: retain ls)"
    )
    with pytest.raises(
        RetainError, match=r"^unknown dataset 'zzqx-9': not a registry .* \(see: retain ls\)$"
    ):
        load_dataset("zzqx-9")


def test_looks_like_path() -> None:
    assert looks_like_path("data.csv")
    assert looks_like_path("./data")
    assert looks_like_path("~/x")
    assert looks_like_path("d/train.parquet")
    assert not looks_like_path("stanfordnlp/imdb")
    assert not looks_like_path("imdb")


def test_encode_labels() -> None:
    ids, names = encode_labels(["b", "a", None, "b", ""], None, where="f", column="label")
    assert (ids, names) == ([1, 0, None, 1, None], ["a", "b"])
    ids, names = encode_labels([2, 0, 2.0, float("nan")], None, where="f", column="label")
    assert (ids, names) == ([2, 0, 2, None], ["0", "1", "2"])
    ids, names = encode_labels([-1, 1, 1], None, where="f", column="label")
    assert (ids, names) == ([0, 1, 1], ["-1", "1"])
    feature = datasets.ClassLabel(names=["neg", "pos"])
    assert encode_labels([1, -1, 0], feature, where="f", column="label") == (
        [1, None, 0],
        ["neg", "pos"],
    )


def test_labels_mixing_integers_with_other_values_warn(tmp_path: Path) -> None:
    labels = ["0", "1", "x", "1.5"]
    rows = [(text, labels[i % 4]) for i, (text, _) in enumerate(REVIEWS)]
    path = _write_csv(tmp_path / "train.csv", ["text", "label"], rows)
    with pytest.warns(UserWarning, match="mix integers") as caught:
        data = load_dataset(path)
    message = str(caught[0].message)
    assert message == (
        f"labels of {path} mix integers with other values ('0', '1', '1.5', 'x'): 4 classes; "
        "check the label column 'label'"
    )
    assert data["train"].features["label"].names == ["0", "1", "1.5", "x"]  # accepted as asked
    with pytest.warns(UserWarning, match=r"mix integers with other values \('0', '1', 'x'\)"):
        encode_labels([0, 1, "x"], None, where="f.jsonl", column="label")


@pytest.mark.filterwarnings("error")
def test_labels_of_one_type_do_not_warn() -> None:
    encode_labels(["neg", "pos", "neg"], None, where="f", column="label")
    encode_labels([0, 1, 2], None, where="f", column="label")
    encode_labels(["-1", "0", "1"], None, where="f", column="label")
    encode_labels([-1, 0, 1], None, where="f", column="label")
