"""A probe that scores a model's accuracy on a :class:`~retain.data.task.Task` (its own data).

It turns a held-out task split into a capability of an :class:`~retain.evaluation.suite.EvalSuite`,
so the forgetting monitor (:mod:`retain.training.monitor`) can watch earlier tasks while a new one
trains.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from retain.data.task import Task
from retain.data.task_heads import task_router
from retain.errors import RetainError
from retain.evaluation.base import ProbeResult
from retain.evaluation.task_accuracy import task_accuracy_examples

__all__ = ["TaskAccuracyProbe"]


class TaskAccuracyProbe:
    """Accuracy on ``task`` through its objective: ``score = task_accuracy(model, task)``.

    ``score`` = fraction of non-ignored target positions where ``argmax(logits) == target``, in
    [0, 1] (:func:`retain.evaluation.task_accuracy.task_accuracy`); ``metric = "accuracy"``,
    ``higher_is_better = True``. The tokenizer is ignored: the task's examples are already tensors.
    ``details``: ``n`` (examples scored).
    """

    metric = "accuracy"
    higher_is_better = True

    def __init__(self, name: str, task: Task, batch_size: int = 256) -> None:
        if batch_size < 1:
            raise RetainError(f"probe {name!r}: batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.task = task
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"TaskAccuracyProbe({self.name!r}, task={self.task.name!r})"

    def evaluate(self, model: nn.Module, tokenizer: Any = None) -> ProbeResult:
        """Accuracy of ``model`` on the task (eval mode, no gradients, mode restored).

        A model with one head per task (a module with ``use_task`` and ``active_task``, such as
        :class:`retain.data.task_heads.TaskHeads`) is routed through the task's head for the
        evaluation, then back to the head it was using.
        """
        heads = task_router(model)
        if heads is not None and not hasattr(heads, "active_task"):
            heads = None  # no way to route back afterwards: evaluate as the model is
        previous = None if heads is None else heads.active_task
        if heads is not None:
            heads.use_task(self.task.name)
        try:
            examples = task_accuracy_examples(model, self.task, batch_size=self.batch_size)
        finally:
            if heads is not None and previous is not None:
                heads.use_task(previous)
        return ProbeResult(examples.score, {"n": len(self.task.examples)}, examples)
