"""Watch a task sequence while it trains: one event per optimizer step and one per task.

:func:`~retain.training.sequence.fit_sequence` calls an observer's
:meth:`SequenceObserver.on_step` after every optimizer step (after that step's checkpoint, when
one is due) and :meth:`SequenceObserver.on_task_end` once each task is trained and scored (before
``after_task``). Loggers and experiment trackers (:mod:`retain.experiment.tracking`) are built on
it. Steps are counted two ways: ``step`` within the task (1 = its first optimizer step) and
``global_step`` over the sequence (step ``s`` of task ``t`` is ``s`` plus the steps of tasks
``0 .. t-1``), so every figure has one x-axis across tasks. A resumed run reports the steps it
trains itself, from the checkpoint on.

The objects an event carries are the engine's own (not copies): read them, never change them.
Under ``torchrun`` every process is called alike; log from the main one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from retain.records.run import TaskLog
from retain.training.loop import TaskHooks
from retain.training.monitor import ForgettingMonitor

__all__ = ["SequenceObserver", "StepEvent", "TaskEndEvent", "observed"]


@dataclass(frozen=True)
class StepEvent:
    """One optimizer step of a task.

    Attributes:
        task: the task's index in the sequence (0-based).
        step: optimizer steps of this task so far (``log.steps``).
        global_step: optimizer steps of the whole sequence so far.
        log: the task's log so far: ``log.losses[-1]`` is this step's loss (nats per target),
            ``log.lrs[-1]`` the learning rate it used.
        monitor: the forgetting monitor's evaluations of this task so far, oldest first (the
            fields of :class:`~retain.records.run.MonitorEval`; ``step`` counts within the task,
            0 = its start); empty without a monitor.
    """

    task: int
    step: int
    global_step: int
    log: TaskLog
    monitor: Sequence[Mapping[str, Any]] = ()


@dataclass(frozen=True)
class TaskEndEvent:
    """A task trained and scored.

    Attributes:
        task: the task's index in the sequence (0-based).
        global_step: optimizer steps of the whole sequence once this task ended.
        log: the task's whole log (``log.monitor``: the monitor's account, when there is one).
        scores: row ``task`` of the score matrix ``R``: every task's test score after this
            task, by task name (the run's score: accuracy, or minus the loss for causal LMs).
        monitor: every monitor evaluation of the task, the last one at its end (as in
            :attr:`StepEvent.monitor`).
    """

    task: int
    global_step: int
    log: TaskLog
    scores: Mapping[str, float]
    monitor: Sequence[Mapping[str, Any]] = ()


class SequenceObserver(Protocol):
    """What :func:`~retain.training.sequence.fit_sequence` calls while it trains."""

    def on_step(self, event: StepEvent) -> None:
        """After every optimizer step."""

    def on_task_end(self, event: TaskEndEvent) -> None:
        """After each task is trained and scored."""


def observed(
    hooks: TaskHooks,
    observer: SequenceObserver | None,
    task: int,
    steps_before: int,
    monitor: ForgettingMonitor | None = None,
) -> TaskHooks:
    """``hooks`` with ``observer.on_step`` called after each step, after ``hooks.after_step``.

    ``steps_before``: optimizer steps of the tasks before ``task``; ``monitor``: the task's
    forgetting monitor, whose history the events carry.
    """
    if observer is None:
        return hooks
    inner = hooks.after_step

    def after_step(log: TaskLog, optimizer: Optimizer, scheduler: LRScheduler | None) -> None:
        if inner is not None:
            inner(log, optimizer, scheduler)
        history = () if monitor is None else monitor.history
        observer.on_step(StepEvent(task, log.steps, steps_before + log.steps, log, history))

    return replace(hooks, after_step=after_step)
