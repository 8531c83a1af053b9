"""Accuracy of a classifier on a :class:`~retain.data.task.Task`, through the task's objective."""

from __future__ import annotations

import torch
from torch import nn

from retain.data.task import IGNORE_INDEX, Task
from retain.evaluation.base import eval_mode

__all__ = ["task_accuracy"]


def task_accuracy(model: nn.Module, task: Task, batch_size: int = 256) -> float:
    """Fraction of non-ignored target positions where ``argmax(logits) == target``, in [0, 1].

    Runs in eval mode under ``no_grad``; the model's previous mode is restored.
    """
    correct = total = 0
    with eval_mode(model), torch.no_grad():
        for batch in task.batches(batch_size):
            logits, targets = task.objective.logits_and_targets(model, batch)
            valid = targets != IGNORE_INDEX
            correct += int(((logits.argmax(-1) == targets) & valid).sum())
            total += int(valid.sum())
    return correct / total if total else float("nan")
