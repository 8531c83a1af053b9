"""Permuted-pixel tasks permute pixels, keep labels, and differ between tasks."""

from __future__ import annotations

import torch

from retain.assets.mlp import MLP
from retain.data.permuted import permuted_image_tasks
from retain.evaluation.task_accuracy import task_accuracy


def test_tasks_share_labels_and_permute_pixels_differently() -> None:
    tasks = permuted_image_tasks("digits", num_tasks=3, seed=0, first_identity=True)
    assert len(tasks) == 3
    a, b = tasks[0].train.examples[0], tasks[1].train.examples[0]
    assert torch.equal(a["labels"], b["labels"])
    assert torch.equal(a["pixel_values"].sort().values, b["pixel_values"].sort().values)
    assert not torch.equal(a["pixel_values"], b["pixel_values"])
    assert tasks[0].train.name != tasks[1].train.name
    again = permuted_image_tasks("digits", num_tasks=3, seed=0, first_identity=True)
    assert torch.equal(
        again[2].test.examples[5]["pixel_values"], tasks[2].test.examples[5]["pixel_values"]
    )


def test_task_accuracy_counts_argmax_hits() -> None:
    task = permuted_image_tasks("digits", num_tasks=1)[0].test
    model = MLP(64, [], 10)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.arange(10.0))  # always predicts class 9
    labels = torch.stack([ex["labels"] for ex in task.examples])
    assert task_accuracy(model, task, batch_size=7) == int((labels == 9).sum()) / len(labels)
    assert model.training  # mode restored
