"""Scores of a model on a :class:`~retain.data.task.Task` through the task's objective: accuracy,
mean loss, minus the loss (a higher-is-better score for causal-LM sequences)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from retain.data.task import IGNORE_INDEX, Task, summed_loss
from retain.evaluation.base import eval_mode
from retain.paired_statistics import ExampleScores

__all__ = ["negative_loss", "task_accuracy", "task_accuracy_examples", "task_loss"]


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


def task_accuracy_examples(model: nn.Module, task: Task, batch_size: int = 256) -> ExampleScores:
    """Per example, its correct and scored target positions (:func:`task_accuracy` is
    ``Σ correct / Σ scored``): a mean of correctness when every example has one target (a
    classification), a ratio otherwise (token accuracy of a sequence)."""
    correct: list[np.ndarray] = []
    scored: list[np.ndarray] = []
    with eval_mode(model), torch.no_grad():
        for batch in task.batches(batch_size):
            logits, targets = task.objective.logits_and_targets(model, batch)
            valid = targets != IGNORE_INDEX
            hits = (logits.argmax(-1) == targets) & valid
            rows = targets.shape[0] if targets.dim() else 1
            correct.append(hits.reshape(rows, -1).sum(1).cpu().numpy())
            scored.append(valid.reshape(rows, -1).sum(1).cpu().numpy())
    values = np.concatenate(correct).astype(float) if correct else np.zeros(0)
    weights = np.concatenate(scored).astype(float) if scored else np.zeros(0)
    if weights.size and bool((weights == 1).all()):
        return ExampleScores(values)
    return ExampleScores(values, weights, "ratio")


def task_loss(model: nn.Module, task: Task, batch_size: int = 256) -> float:
    """Mean cross-entropy over every target position of ``task``, in nats per target (token).

    ``exp(task_loss)`` is the perplexity of a causal-LM task. Eval mode, ``no_grad``, mode restored.
    """
    total = count = 0.0
    with eval_mode(model), torch.no_grad():
        for batch in task.batches(batch_size):
            logits, targets = task.objective.logits_and_targets(model, batch)
            total += float(summed_loss(logits, targets))
            count += int((targets != IGNORE_INDEX).sum())
    return total / count if count else float("nan")


def negative_loss(model: nn.Module, task: Task) -> float:
    """``-task_loss``: a higher-is-better score for causal-LM task sequences (nats per token).

    With it, ``R[t][i]`` differences are changes in mean log-likelihood per token, so BWT < 0 is
    forgetting measured in nats.
    """
    return -task_loss(model, task)
