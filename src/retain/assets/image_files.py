"""Image-classification data from a user's own files, in the shape of the registry's image
datasets: ``train`` and ``test`` splits with ``pixels`` (one flattened image a row, float32) and
``label`` (a ``ClassLabel``).

Sources (:func:`load_image_files`):

- a numpy ``.npz`` with an image array and a label array: ``<image>_train``/``<image>_test``
  and ``<label>_train``/``<label>_test`` (the Keras ``mnist.npz`` layout: ``x_train``, ``y_train``,
  ``x_test``, ``y_test``), or ``<image>`` and ``<label>`` alone (then split). The names are
  ``image_column`` and ``label_column``; by default the first of ``x``, ``images``, ``image``,
  ``pixels`` and of ``y``, ``labels``, ``label`` that the file has.
- a folder of idx files, the original MNIST layout (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-...``).
- a folder of image files, read by ``datasets``' ``imagefolder``: one subfolder per class
  (``<folder>/<class>/<image>.png``), optionally under ``train/`` and ``test/``.
- a ``.parquet`` or ``.arrow`` file, or a folder of them (``train-*.parquet``,
  ``test-*.parquet``), or a ``datasets`` name (the hub, or its local cache offline), whose
  ``image_column`` (default ``image``) holds images (``datasets.Image``) or flat pixel lists,
  and whose ``label_column`` (default ``label``) holds the class.

Pixels: integer pixels (``uint8`` grey levels 0-255) are divided by 255, so they lie in [0, 1] like
the registry's; float pixels are kept as they are. Every image must have the same size and
number of channels (an image folder of mixed grey and colour images is read as colour). A source
with its own test split keeps it (as given, not deduplicated); one without is deduplicated and
split with ``test_size`` and ``seed``, stratified by class
(:func:`retain.assets.splits.image_dict`).
"""

from __future__ import annotations

import difflib
import functools
import gzip
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from retain.assets.local_data import exception_line, looks_like_path
from retain.assets.splits import image_dict
from retain.errors import RetainError

__all__ = ["IMAGE_SUFFIXES", "is_image_source", "load_image_files", "read_idx"]

#: File types read as image data (besides folders of idx or image files).
IMAGE_SUFFIXES = (".npz", ".parquet", ".arrow")
_PICTURES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_IMAGE_KEYS = ("x", "images", "image", "pixels")
_LABEL_KEYS = ("y", "labels", "label")
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
Pixels = np.ndarray[Any, np.dtype[Any]]


def is_image_source(name: str) -> bool:
    """Whether ``name`` is a local image source of the module docstring (an ``.npz``, ``.parquet``
    or ``.arrow`` path, or an existing folder holding idx or image files)."""
    path = Path(name).expanduser()
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    if not path.is_dir():
        return False
    return bool(_idx_files(path)) or any(
        p.suffix.lower() in (*_PICTURES, ".parquet", ".arrow")
        for p in path.rglob("*")
        if p.is_file()
    )


def load_image_files(
    name: str,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    test_size: float = 0.2,
    seed: int = 0,
    where: str | None = None,
) -> datasets.DatasetDict:
    """The image data in ``name`` (see the module docstring) as ``pixels``/``label`` splits.

    Data without a test split of its own is split with ``test_size`` and ``seed``, and a
    warning (naming ``where``, default ``name``) says how many rows were held out.
    """
    path = Path(name).expanduser()
    columns = (image_column or "image", label_column or "label")
    suffix = path.suffix.lower()
    if not path.exists():
        if looks_like_path(name):
            raise RetainError(f"no such file or folder: {name!r}")
        splits = _tables(_hub(name), name, *columns)
    elif path.is_dir() and _idx_files(path):
        splits = _idx_folder(path, name)
    elif path.is_dir() and any(p.suffix in (".parquet", ".arrow") for p in path.iterdir()):
        splits = _tables(_read(name, lambda: datasets.load_dataset(str(path))), name, *columns)
    elif path.is_dir():
        splits = _picture_folder(path, name)
    elif suffix == ".npz":
        splits = _npz(path, name, image_column, label_column)
    elif suffix in (".parquet", ".arrow"):
        load = functools.partial(datasets.load_dataset, suffix[1:], data_files=str(path))
        splits = _tables(_read(name, load), name, *columns)
    else:
        raise RetainError(
            f"{name}: unknown image data format {path.suffix or '(none)'!r}; use an .npz, "
            ".parquet or .arrow file, a folder of idx or image files, or a datasets name"
        )
    data = _as_dict(splits, name, test_size, seed)
    if "test" not in splits:
        held, total = len(data["test"]), len(data["train"]) + len(data["test"])
        warnings.warn(
            f"{where or name}: no test split of its own; held out {held} of {total} images "
            f"({held / max(total, 1):.0%}, stratified, seed {seed}) as the test split",
            UserWarning,
            stacklevel=2,
        )
    return data


def read_idx(path: Path) -> Pixels:
    """The array in an idx file (``.gz`` or not): magic ``0 0 type ndim``, big-endian int32 sizes,
    then the values (Y. LeCun's MNIST format)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise RetainError(f"{path}: not an idx file (bad magic number); give MNIST-style idx files")
    ndim = data[3]
    shape = tuple(int(v) for v in np.frombuffer(data, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    count = int(np.prod(shape))
    if len(data) - 4 - 4 * ndim < count * dtype.itemsize:
        raise RetainError(f"{path}: truncated idx file (shape {shape}); download it again")
    values = np.frombuffer(data, dtype, count=count, offset=4 + 4 * ndim)
    return values.reshape(shape).astype(dtype.newbyteorder("="))


def _idx_files(folder: Path) -> dict[str, Path]:
    found = {}
    for file in sorted(folder.iterdir()):
        match = re.match(r"(train|t10k|test)-(images|labels)-idx\d-ubyte(\.gz)?$", file.name)
        if match:
            split = "train" if match.group(1) == "train" else "test"
            found[f"{split}/{match.group(2)}"] = file
    return found


def _idx_folder(folder: Path, name: str) -> dict[str, tuple[Pixels, Pixels]]:
    files = _idx_files(folder)
    splits = {}
    for split in ("train", "test"):
        images, labels = files.get(f"{split}/images"), files.get(f"{split}/labels")
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            missing = "images" if images is None else "labels"
            raise RetainError(
                f"{name}: the {split} {missing} idx file is missing; put both "
                f"{split}-images-idx3-ubyte and {split}-labels-idx1-ubyte there"
            )
        splits[split] = (read_idx(images), read_idx(labels))
    return splits


def _npz(
    path: Path, name: str, image_column: str | None, label_column: str | None
) -> dict[str, tuple[Pixels, Pixels]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as exc:
        raise RetainError(
            f"{name}: not a readable .npz file ({exc}); save it with np.savez"
        ) from None
    x = _npz_key(arrays, image_column, _IMAGE_KEYS, name, "image_column")
    y = _npz_key(arrays, label_column, _LABEL_KEYS, name, "label_column")
    if f"{x}_train" in arrays:
        for split in ("train", "test"):
            if f"{x}_{split}" in arrays and f"{y}_{split}" not in arrays:
                raise RetainError(
                    f"{name}: has {x}_{split} but no {y}_{split} (it has {sorted(arrays)}); set "
                    "label_column"
                )
        return {
            split: (arrays[f"{x}_{split}"], arrays[f"{y}_{split}"])
            for split in ("train", "test")
            if f"{x}_{split}" in arrays
        }
    return {"all": (arrays[x], arrays[y])}


def _npz_key(
    arrays: dict[str, Pixels], asked: str | None, defaults: tuple[str, ...], name: str, option: str
) -> str:
    candidates = (asked,) if asked else defaults
    for key in candidates:
        if key in arrays or f"{key}_train" in arrays:
            return key
    wanted = " or ".join(repr(k) for k in candidates)
    raise RetainError(
        f"{name}: no array {wanted} (nor {candidates[0]}_train/_test); it has {sorted(arrays)}: "
        f"set {option}"
    )


def _picture_folder(folder: Path, name: str) -> dict[str, tuple[Pixels, Pixels]]:
    """The images of ``folder`` by split; labels are the class subfolders' positions in sorted
    order (``datasets``' ``imagefolder``)."""
    try:
        loaded = datasets.load_dataset("imagefolder", data_dir=str(folder))
    except Exception as exc:  # datasets raises many types for a folder it cannot read
        reason = exception_line(exc)
        raise RetainError(f"could not read the image folder {name!r}: {reason}") from exc
    splits = {}
    for split, table in dict(loaded).items():
        if "label" not in table.column_names:
            raise RetainError(
                f"{name}: the images have no labels; put each class's images in its own "
                "subfolder (<folder>/<class>/<image>.png)"
            )
        images = [_picture(image) for image in table["image"]]
        splits["test" if split in ("test", "validation") else split] = (
            _stack(images, name),
            np.asarray(table["label"]),
        )
    return splits


def _picture(image: Any) -> Pixels:
    mode = "L" if image.mode in ("1", "L", "I;16", "I", "F") else "RGB"
    return np.asarray(image.convert(mode))


def _read(name: str, load: Callable[[], object]) -> datasets.DatasetDict:
    try:
        loaded = load()
    except Exception as exc:  # datasets raises many types for a malformed source
        reason = exception_line(exc)
        raise RetainError(f"could not read {name}: {reason}") from exc
    if not isinstance(loaded, datasets.DatasetDict):
        raise RetainError(f"{name}: expected splits of images, got {type(loaded).__name__}")
    return loaded


def _hub(name: str) -> datasets.DatasetDict:
    """``datasets.load_dataset(name)``: the hub, or its local cache when offline. A near miss
    of a registry name (``mnsit``) is a typo, answered with the registry's did-you-mean."""
    from retain.assets.datasets import DATASETS

    if "/" not in name and difflib.get_close_matches(name.lower(), DATASETS.names(), 1, 0.8):
        raise RetainError(DATASETS.unknown_message(name))
    try:
        loaded = datasets.load_dataset(name)
    except (ConnectionError, FileNotFoundError) as exc:
        raise RetainError(
            f"image dataset {name!r} is neither a file nor a folder, and datasets cannot find "
            "it (offline, it must be in the local cache); check the name or give a path "
            "(registry datasets: retain ls)"
        ) from exc
    except Exception as exc:  # datasets raises many types
        reason = exception_line(exc)
        raise RetainError(f"could not load the image dataset {name!r}: {reason}") from exc
    if not isinstance(loaded, datasets.DatasetDict):
        raise RetainError(f"{name}: expected splits of images, got {type(loaded).__name__}")
    return loaded


def _tables(
    loaded: datasets.DatasetDict, name: str, image_column: str, label_column: str
) -> dict[str, tuple[Pixels, Pixels]]:
    """The images and labels of every split (``validation`` counts as test; one split alone is
    split again)."""
    splits = {}
    for split, table in loaded.items():
        for column, option in ((image_column, "image_column"), (label_column, "label_column")):
            if column not in table.column_names:
                raise RetainError(
                    f"{name}: no column {column!r} (it has {table.column_names}); set {option}"
                )
        images = [
            _picture(v) if hasattr(v, "convert") else np.asarray(v) for v in table[image_column]
        ]
        key = "test" if split in ("test", "validation") else split
        splits[key] = (_stack(images, name), np.asarray(table[label_column]))
    return splits if "test" in splits else {"all": splits[next(iter(splits))]}


def _stack(images: list[Pixels], name: str) -> Pixels:
    shapes = sorted({tuple(image.shape) for image in images})
    if len(shapes) > 1:
        shown = " and ".join("x".join(str(d) for d in s) for s in shapes[:2])
        raise RetainError(
            f"{name}: images of different sizes ({shown}); resize them to one size first"
        )
    if not images:
        raise RetainError(f"{name}: no images found")
    return np.stack(images)


def _scaled(pixels: Pixels, name: str) -> np.ndarray[Any, np.dtype[np.float32]]:
    flat = pixels.reshape(len(pixels), -1)
    if np.issubdtype(flat.dtype, np.integer):
        return np.asarray(flat.astype(np.float32) / np.float32(255.0), dtype=np.float32)
    if np.issubdtype(flat.dtype, np.floating):
        return np.asarray(flat, dtype=np.float32)
    raise RetainError(f"{name}: pixels of type {flat.dtype} are not numbers; store grey levels")


def _labels(labels: Pixels, name: str) -> list[int]:
    flat = np.asarray(labels).reshape(-1)
    if not np.issubdtype(flat.dtype, np.integer) or (flat.size and flat.min() < 0):
        raise RetainError(f"{name}: labels must be class numbers 0, 1, 2, ... (got {flat.dtype})")
    return [int(v) for v in flat]


def _as_dict(
    splits: dict[str, tuple[Pixels, Pixels]], name: str, test_size: float, seed: int
) -> datasets.DatasetDict:
    for pixels, labels in splits.values():
        if len(pixels) != len(np.asarray(labels).reshape(-1)):
            raise RetainError(
                f"{name}: {len(pixels)} images but {np.asarray(labels).size} labels; give one "
                "label per image"
            )
    if set(splits) == {"all"} or "test" not in splits:
        pixels, labels = splits.get("all") or splits["train"]
        pooled = _labels(labels, name)
        names = [str(c) for c in range(max(pooled) + 1)]
        return image_dict(_scaled(pixels, name), pooled, names, test_size=test_size, seed=seed)
    widths = {int(np.prod(p.shape[1:])) for p, _ in splits.values()}
    if len(widths) > 1:
        raise RetainError(f"{name}: train and test images differ in size; resize them to one")
    ys = {split: _labels(labels, name) for split, (_, labels) in splits.items()}
    names = [str(c) for c in range(max(max(v) for v in ys.values()) + 1)]
    width = widths.pop()
    features = datasets.Features(
        {
            "pixels": datasets.Sequence(datasets.Value("float32"), length=width),
            "label": datasets.ClassLabel(names=names),
        }
    )
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"pixels": _scaled(splits[split][0], name), "label": ys[split]},
                features=features,
            )
            for split in ("train", "test")
        }
    )
