"""The reference points of a continual-learning comparison: ``joint`` and ``single`` training.

A score matrix ``R[t][i]`` says how much a strategy forgot, not how good it could have been. The
field's comparisons (GEM, Avalanche, Mammoth) set every strategy beside two references trained
on the same tasks, with the same settings and no strategy:

* ``joint``: every task's training data mixed into one task (in a random order drawn from the
  run's seed, so it is mixed even with ``shuffle: false``) and trained once (``epochs`` or
  ``max_steps`` over the mixture). No sequence, so nothing is forgotten:
  its scores are the upper bound of each task's score under this model and budget. Its matrix
  has one measured row, the last (``R[T-1][i]``, every task scored after the joint training);
  rows ``0 .. T-2`` are ``NaN``, so ACC is the mean of that row and BWT, FWT and forgetting are
  undefined (``NaN``).
* ``single``: each task trained from the starting weights alone (the weights are reset before
  every task): the new-task score without any interference. Row ``t`` is the model trained on
  task ``t`` only, scored on every task; the reference's figure is the diagonal,
  ``ACC = mean_i R[i][i]``, and BWT, FWT and forgetting are undefined (``NaN``). It holds one
  more copy of the weights (the starting ones) for the resets.

Both train plainly: strategies, a forgetting budget and the monitor are refused (a reference with
a regularizer would no longer bound anything). ``joint`` needs tasks that can share one batch:
the same objective and collate function (one shared head); a model with a head per task cannot
mix them and is refused with that reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from retain.data.permuted import TaskSplit
from retain.data.task import Task
from retain.errors import RetainError
from retain.metrics import (
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forward_transfer,
)
from retain.strategies.chain import Chain

__all__ = [
    "REFERENCES",
    "SequenceMode",
    "StartWeights",
    "check_mode",
    "sequence_metrics",
    "training_stages",
]

SequenceMode = Literal["sequential", "joint", "single"]
#: The reference kinds a config or sweep can ask for.
REFERENCES: tuple[str, ...] = ("joint", "single")


def check_mode(mode: str, strategies: Chain, monitor: object | None, task_heads: bool) -> None:
    """Refuse an unknown mode, a reference with strategies or a monitor, or ``joint`` on a model
    with a head per task (``task_heads``), whose tasks cannot share a batch (one line each)."""
    if mode not in get_args(SequenceMode):
        raise RetainError(f"mode {mode!r} is not one of {', '.join(get_args(SequenceMode))}")
    if mode == "sequential":
        return
    if strategies.strategies:
        raise RetainError(
            f"the {mode!r} reference trains without strategies, and got "
            f"{strategies.describe()}; drop the strategies (and the budget) for it"
        )
    if monitor is not None:
        raise RetainError(f"the {mode!r} reference trains without a monitor; drop monitor")
    if mode == "joint" and task_heads:
        raise RetainError(
            "joint training mixes every task's data into one task, and this model has a head "
            "per task (task-heads), so a mixed batch has no head to go through; use the single "
            "reference, or a model with one shared head"
        )


def training_stages(splits: Sequence[TaskSplit], mode: SequenceMode, seed: int) -> list[Task]:
    """What is trained, in order: every task's training data (``sequential``, ``single``), or
    one task of all of it mixed in an order drawn from ``seed`` (``joint``, named ``joint``)."""
    if mode != "joint":
        return [split.train for split in splits]
    first = splits[0].train
    for split in splits[1:]:
        task = split.train
        if task.objective != first.objective or task.collate != first.collate:
            raise RetainError(
                f"joint training mixes every task's training data into one task, and task "
                f"{task.name!r} has another objective or batch format than {first.name!r} (a "
                "head per task?); use the single reference, or tasks that share one head"
            )
    pool = [example for split in splits for example in split.train.examples]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
    examples = [pool[i] for i in order]
    return [replace(first, name="joint", examples=examples, texts=None)]


def sequence_metrics(
    matrix: list[list[float]], baseline: list[float], mode: SequenceMode
) -> dict[str, float]:
    """ACC, BWT, FWT and average forgetting of ``matrix`` (see the module docstring for the
    references: their ACC only, the others ``NaN``)."""
    nan = math.nan
    if mode == "single":
        diagonal = [row[t] for t, row in enumerate(matrix) if not math.isnan(row[t])]
        acc = sum(diagonal) / len(diagonal) if diagonal else nan
        return _undefined_but(acc)
    if mode == "joint":
        return _undefined_but(average_accuracy(matrix))
    return {
        "average_accuracy": average_accuracy(matrix),
        "backward_transfer": backward_transfer(matrix),
        "forward_transfer": forward_transfer(matrix, baseline),
        "average_forgetting": average_forgetting(matrix),
    }


def _undefined_but(acc: float) -> dict[str, float]:
    nan = math.nan
    return {
        "average_accuracy": acc,
        "backward_transfer": nan,
        "forward_transfer": nan,
        "average_forgetting": nan,
    }


class StartWeights:
    """The starting weights of a ``single`` reference (a detached copy of ``model.state_dict()``,
    local shards on a sharded model), put back before every task after the first."""

    def __init__(self, model: nn.Module, mode: SequenceMode) -> None:
        self.state: dict[str, Tensor] | None = None
        if mode == "single":
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def reset(self, model: nn.Module, task: int, resumed_mid_task: bool) -> None:
        """Put the starting weights back before task ``task`` (not the first task, and not a
        task resumed from a checkpoint taken during it)."""
        if self.state is None or task == 0 or resumed_mid_task:
            return
        model.load_state_dict(self.state)
