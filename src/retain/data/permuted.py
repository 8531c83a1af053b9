"""Permuted-pixel task sequences (Goodfellow et al. 2013; Kirkpatrick et al. 2017, permuted MNIST).

Task t applies one fixed random permutation ``pi_t`` to the pixels of every image; labels stay.
All tasks share the input distribution's statistics but not its layout, so a network trained on
task t+1 overwrites what it learnt for task t: the classic domain-incremental benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from retain.data.task import Task
from retain.errors import RetainError

__all__ = ["TaskSplit", "permuted_image_tasks"]


@dataclass(frozen=True)
class TaskSplit:
    """A task's training data and its held-out test data (same objective)."""

    train: Task
    test: Task


def permuted_image_tasks(
    dataset: str = "mnist", num_tasks: int = 5, seed: int = 0, first_identity: bool = False
) -> list[TaskSplit]:
    """``num_tasks`` permuted versions of an image dataset: a registry name
    (:mod:`retain.assets.datasets`) or the user's own image files (an ``.npz``, ``.parquet`` or
    ``.arrow`` file, or a folder of idx or image files: :mod:`retain.assets.image_files`).

    Examples are ``{"pixel_values": float32 [D], "labels": int64 []}``; permutations come from a
    ``torch.Generator`` seeded with ``seed`` (task 0 unpermuted when ``first_identity``).
    """
    from retain.assets.datasets import DATASETS, load_dataset
    from retain.assets.image_files import load_image_files

    data = load_dataset(dataset) if dataset in DATASETS else load_image_files(dataset)
    if "pixels" not in data["train"].column_names:
        raise RetainError(
            f"dataset {dataset!r} holds no images (no 'pixels' column); use an image dataset "
            "(see: retain ls) or your own image files"
        )
    splits = {}
    for part in ("train", "test"):
        pixels = torch.tensor(list(data[part]["pixels"]), dtype=torch.float32)
        labels = torch.tensor(list(data[part]["label"]), dtype=torch.long)
        splits[part] = (pixels, labels)
    base = dataset if dataset in DATASETS else Path(dataset).stem
    width = splits["train"][0].shape[1]
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for t in range(num_tasks):
        perm = (
            torch.arange(width)
            if (t == 0 and first_identity)
            else torch.randperm(width, generator=g)
        )
        built = {}
        for part, (pixels, labels) in splits.items():
            permuted = pixels[:, perm]
            examples = [
                {"pixel_values": permuted[i], "labels": labels[i]} for i in range(len(labels))
            ]
            built[part] = Task(f"{base}-perm{t}", examples)
        tasks.append(TaskSplit(built["train"], built["test"]))
    return tasks
