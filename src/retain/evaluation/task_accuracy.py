"""Scores of a model on a :class:`~retain.data.task.Task` through the task's objective: accuracy,
mean loss, minus the loss (a higher-is-better score for causal-LM sequences).

Under ``torch.distributed`` (every rank calling), :func:`task_accuracy` and :func:`task_loss` are
data-parallel: each rank collates and scores every ``W``-th batch
(:func:`retain.distributed.rank_share`; its remaining forwards repeat the first batch, uncounted,
so every rank runs as many as the others) and the sums (correct and scored positions; summed
loss and target count) are all-reduced once, so every rank returns the same score as one process
would (accuracy exactly; the loss up to float64 rounding of a different summation order).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from retain.data.task import IGNORE_INDEX, Task, summed_loss
from retain.distributed import all_reduce_sum, rank_and_world, rank_share
from retain.evaluation.base import eval_mode
from retain.paired_statistics import ExampleScores

__all__ = ["negative_loss", "task_accuracy", "task_accuracy_examples", "task_loss"]


def task_accuracy(model: nn.Module, task: Task, batch_size: int = 256) -> float:
    """Fraction of non-ignored target positions where ``argmax(logits) == target``, in [0, 1].

    Runs in eval mode under ``no_grad``; the model's previous mode is restored.
    """
    sums = torch.zeros(2, dtype=torch.float64)  # correct, scored
    with eval_mode(model), torch.no_grad():
        for index, counted in rank_share(range(task.batch_count(batch_size))):
            batch = task.batch(index, batch_size)
            logits, targets = task.objective.logits_and_targets(model, batch)
            if not counted:
                continue
            valid = targets != IGNORE_INDEX
            sums[0] += int(((logits.argmax(-1) == targets) & valid).sum())
            sums[1] += int(valid.sum())
    correct, total = _all_ranks(sums, model)
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
    sums = torch.zeros(2, dtype=torch.float64)  # summed loss (nats), targets
    with eval_mode(model), torch.no_grad():
        for index, counted in rank_share(range(task.batch_count(batch_size))):
            batch = task.batch(index, batch_size)
            logits, targets = task.objective.logits_and_targets(model, batch)
            if not counted:
                continue
            sums[0] += float(summed_loss(logits, targets))
            sums[1] += int((targets != IGNORE_INDEX).sum())
    total, count = _all_ranks(sums, model)
    return total / count if count else float("nan")


def _all_ranks(sums: torch.Tensor, model: nn.Module) -> tuple[float, float]:
    """``sums`` added over every process (on the model's device, which NCCL needs)."""
    if rank_and_world()[1] > 1:
        device = next((p.device for p in model.parameters()), sums.device)
        sums = all_reduce_sum(sums.to(device)).cpu()
    total = sums
    return float(total[0]), float(total[1])


def negative_loss(model: nn.Module, task: Task) -> float:
    """``-task_loss``: a higher-is-better score for causal-LM task sequences (nats per token).

    With it, ``R[t][i]`` differences are changes in mean log-likelihood per token, so BWT < 0 is
    forgetting measured in nats.
    """
    return -task_loss(model, task)
