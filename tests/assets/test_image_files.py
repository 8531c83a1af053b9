"""A user's own image files read back exactly: the offline MNIST exported to ``.npz`` (Keras
layout and a single array pair), to MNIST idx files, to an image folder and to parquet gives the
same pixels and labels as the registry; malformed sources get one line naming the fix."""

from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from retain.assets.datasets import load_dataset
from retain.assets.image_files import is_image_source, load_image_files, read_idx
from retain.data.permuted import permuted_image_tasks
from retain.errors import RetainError

TRAIN, TEST = 120, 60  # a slice of the registry's MNIST splits (keeps the files small)


def _mnist() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The registry's MNIST slice as uint8 grey levels (exactly its pixels * 255)."""
    data = load_dataset("mnist")
    out = {}
    for split, n in (("train", TRAIN), ("test", TEST)):
        rows = data[split].select(range(n))
        pixels = np.asarray(rows["pixels"], dtype=np.float32)
        grey = np.rint(pixels * 255).astype(np.uint8)
        assert np.array_equal(grey.astype(np.float32) / np.float32(255.0), pixels)  # exact
        out[split] = (grey.reshape(-1, 28, 28), np.asarray(rows["label"], dtype=np.int64))
    return out


@pytest.fixture(scope="module")
def mnist() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return _mnist()


def _same(data: Any, mnist: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for split, (grey, labels) in mnist.items():
        pixels = np.asarray(data[split]["pixels"], dtype=np.float32)
        assert np.array_equal(pixels, grey.reshape(len(grey), -1).astype(np.float32) / 255)
        assert list(data[split]["label"]) == labels.tolist()


def _write_idx(path: Path, array: np.ndarray) -> None:
    code = 0x08 if array.dtype == np.uint8 else 0x0C
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    body = array.astype(">u1" if code == 0x08 else ">i4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + body)


def test_npz_in_the_keras_layout_keeps_its_splits(
    tmp_path: Path, mnist: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=mnist["train"][0],
        y_train=mnist["train"][1],
        x_test=mnist["test"][0],
        y_test=mnist["test"][1],
    )
    assert is_image_source(str(path))
    _same(load_image_files(str(path)), mnist)


def test_npz_of_one_array_pair_is_split_and_says_so(
    tmp_path: Path, mnist: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    path = tmp_path / "digits.npz"
    np.savez(path, images=mnist["train"][0], labels=mnist["train"][1])
    with pytest.warns(UserWarning, match=r"held out 24 of 120 images \(20%, stratified, seed 0\)"):
        data = load_image_files(str(path))
    assert len(data["train"]) == 96
    assert sorted(set(data["test"]["label"])) == sorted(set(mnist["train"][1].tolist()))


def test_idx_files_read_like_the_original_mnist(
    tmp_path: Path, mnist: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    for split, prefix in (("train", "train"), ("test", "t10k")):
        grey, labels = mnist[split]
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", grey)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    assert read_idx(tmp_path / "t10k-images-idx3-ubyte.gz").shape == (TEST, 28, 28)
    assert is_image_source(str(tmp_path))
    _same(load_image_files(str(tmp_path)), mnist)


def test_an_image_folder_with_a_subfolder_per_class(
    tmp_path: Path, mnist: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    for split, (grey, labels) in mnist.items():
        for i, (image, label) in enumerate(zip(grey, labels, strict=True)):
            folder = tmp_path / "images" / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(folder / f"{i:04d}.png")
    data = load_image_files(str(tmp_path / "images"))
    for split, (grey, labels) in mnist.items():  # imagefolder orders files by class, then name
        order = np.lexsort((np.arange(len(labels)), labels))
        pixels = np.asarray(data[split]["pixels"], dtype=np.float32)
        assert np.array_equal(pixels, grey[order].reshape(len(grey), -1) / np.float32(255))
        assert list(data[split]["label"]) == labels[order].tolist()


def test_parquet_with_pixel_lists(
    tmp_path: Path, mnist: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    import datasets

    grey, labels = mnist["train"]
    table = datasets.Dataset.from_dict(
        {"img": [g.reshape(-1).tolist() for g in grey], "digit": labels.tolist()}
    )
    table.to_parquet(str(tmp_path / "d.parquet"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the held-out notice
        data = load_image_files(
            str(tmp_path / "d.parquet"), image_column="img", label_column="digit"
        )
    assert len(data["train"]) + len(data["test"]) == TRAIN


def test_permuted_tasks_from_an_npz_equal_the_registry_path(
    tmp_path: Path,
) -> None:
    data = load_dataset("digits")
    arrays = {
        f"{key}_{split}": np.asarray(data[split][column], dtype=np.float32 if key == "x" else int)
        for split in ("train", "test")
        for key, column in (("x", "pixels"), ("y", "label"))
    }
    np.savez(tmp_path / "digits.npz", **arrays)  # float pixels are kept as they are
    ours = permuted_image_tasks(str(tmp_path / "digits.npz"), 2, seed=3)
    theirs = permuted_image_tasks("digits", 2, seed=3)
    assert [t.train.name for t in ours] == ["digits-perm0", "digits-perm1"]
    for a, b in zip(ours, theirs, strict=True):
        for x, y in ((a.train, b.train), (a.test, b.test)):
            assert len(x.examples) == len(y.examples)
            assert all(
                bool((p["pixel_values"] == q["pixel_values"]).all()) and p["labels"] == q["labels"]
                for p, q in zip(x.examples, y.examples, strict=True)
            )


def _pictures(folder: Path, sizes: list[tuple[int, int]], labelled: bool = True) -> None:
    for i, size in enumerate(sizes):
        where = folder / str(i % 2) if labelled else folder
        where.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full(size, 7 * i, dtype=np.uint8), mode="L").save(where / f"{i}.png")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda d: (d / "x.bmpx").write_bytes(b"\0" * 10) and d / "x.bmpx",
            r"unknown image data format '\.bmpx'; use an \.npz, \.parquet or \.arrow file",
        ),
        (
            lambda d: np.savez(d / "a.npz", a=np.zeros((3, 4)), b=np.zeros(3)) or d / "a.npz",
            r"no array 'x' or 'images' or 'image' or 'pixels' .*it has \['a', 'b'\]: set "
            r"image_column",
        ),
        (
            lambda d: (
                np.savez(d / "c.npz", x_train=np.zeros((3, 4)), x_test=np.zeros((2, 4)))
                or d / "c.npz"
            ),
            r"no array 'y' or 'labels' or 'label'",
        ),
        (
            lambda d: (
                np.savez(d / "n.npz", x=np.zeros((3, 4)), y=np.zeros(2, dtype=int)) or d / "n.npz"
            ),
            r"3 images but 2 labels; give one label per image",
        ),
        (
            lambda d: _pictures(d / "flat", [(8, 8)] * 4, labelled=False) or d / "flat",
            r"the images have no labels; put each class's images in its own subfolder",
        ),
        (
            lambda d: _pictures(d / "mixed", [(8, 8), (8, 8), (9, 8), (8, 8)]) or d / "mixed",
            r"images of different sizes \(8x8 and 9x8\); resize them to one size first",
        ),
        (
            lambda d: (d / "bad.npz").write_bytes(b"not a zip") and d / "bad.npz",
            r"not a readable \.npz file",
        ),
    ],
)
def test_malformed_image_data_is_one_line(tmp_path: Path, make: Any, expected: str) -> None:
    path = make(tmp_path)
    with pytest.raises(RetainError, match=expected) as info:
        load_image_files(str(path))
    assert "\n" not in str(info.value)


def test_a_folder_of_parquet_splits_reads_like_a_datasets_name(
    tmp_path: Path, mnist: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    import datasets

    folder = tmp_path / "hub-like"
    folder.mkdir()
    for split, (grey, labels) in mnist.items():
        table = datasets.Dataset.from_dict(
            {"image": [Image.fromarray(g, mode="L") for g in grey], "label": labels.tolist()},
            features=datasets.Features(
                {"image": datasets.Image(), "label": datasets.Value("int64")}
            ),
        )
        table.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    assert is_image_source(str(folder))
    _same(load_image_files(str(folder)), mnist)


def test_an_unknown_datasets_name_is_one_line() -> None:
    with pytest.raises(RetainError, match=r"image dataset 'nobody/no-such-images' is neither"):
        load_image_files("nobody/no-such-images")
