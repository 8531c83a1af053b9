"""What a task-sequence run keeps between tasks and in its checkpoints, and how it resumes.

:class:`RunState` is everything :func:`~retain.training.sequence.fit_sequence` has produced so far
(the rows of R, the logs, the suite scores, timings); it is saved as the ``position`` of every
checkpoint. Task-boundary checkpoints go to ``<checkpoint_dir>/tasks``, mid-task ones to
``<checkpoint_dir>/steps`` (:mod:`retain.training.checkpoint`). A mid-task resume loads the task's
boundary checkpoint, lets ``begin_task`` run exactly as the original run did, and then loads the
mid-task checkpoint through :class:`TaskCheckpoints` (weights, optimizer, scheduler, strategies,
monitor and RNG).

Choosing where to resume (:func:`plan_resume`): ``from_checkpoint`` names the folder exactly (a
``tasks/step-<n>`` folder, or a ``steps/step-<n>`` one whose task start is in the sibling
``tasks/``); else ``resume=True`` takes the newest complete task-boundary checkpoint and the newest
complete mid-task one when it belongs to the same task. Every ``step-<n>`` folder passed over is
recorded with its reason in the plan's :meth:`ResumePlan.note`. ``resume=True`` with no complete
boundary checkpoint is an error, never a silent fresh start. A file that fails verification
(size or SHA-256) when loaded is an error naming the next older complete checkpoint to pass as
``from_checkpoint`` (``--from-checkpoint``), when one exists.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from retain.errors import RetainError
from retain.records.run import TaskLog
from retain.strategies.chain import Chain
from retain.training.checkpoint import CorruptCheckpointError, load_checkpoint, save_checkpoint
from retain.training.checkpoint_scan import checkpoint_problem, older_checkpoint, scan_checkpoints
from retain.training.loop import TaskHooks
from retain.training.monitor import ForgettingMonitor

__all__ = [
    "ResumePlan",
    "RunState",
    "TaskCheckpoints",
    "checkpoint_task",
    "load_start",
    "log_dict",
    "plan_resume",
    "save_checkpoint_of",
    "task_log",
]

_AFRESH = "start afresh with --overwrite (resume=False)"


def log_dict(log: TaskLog) -> dict[str, Any]:
    """``log`` as the plain data a checkpoint's position keeps (:func:`task_log`'s inverse)."""
    return log.to_json()


@dataclass
class RunState:
    """The state of one sequence run, saved in every checkpoint's position."""

    names: list[str]
    matrix: list[list[float]] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    suite_baseline: dict[str, Any] | None = None
    suite_after: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    resume_notes: list[str] = field(default_factory=list)

    def position(self, task: int, step: int, log: TaskLog | None) -> dict[str, Any]:
        data = asdict(self)
        data.update(task=task, step=step, global_step=step + sum(x["steps"] for x in self.logs))
        data["log"] = None if log is None else log_dict(log)
        return data

    @classmethod
    def from_position(cls, data: dict[str, Any]) -> RunState:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class ResumePlan:
    """Where a run continues from, and why.

    Attributes:
        boundary: the task-start checkpoint to load (None: start afresh).
        mid: the mid-task checkpoint of that task to continue from (None: start the task over).
        requested: the checkpoint was named by ``from_checkpoint`` (else: the newest complete).
        skipped: each ``step-<n>`` folder passed over, with the reason it is not complete.
    """

    boundary: Path | None = None
    mid: Path | None = None
    requested: bool = False
    skipped: tuple[tuple[Path, str], ...] = ()

    def note(self) -> str:
        """One line saying which checkpoint the run continues from and what it skipped, e.g.
        ``resuming from 'c/steps/step-20' (the newest complete checkpoint, in the task begun at
        'c/tasks/step-12'); skipped 'c/steps/step-24': model.safetensors is missing``."""
        if self.boundary is None:
            return ""
        how = "as requested" if self.requested else "the newest complete checkpoint"
        if self.mid is not None:
            how += f", in the task begun at {str(self.boundary)!r}"
        line = f"resuming from {str(self.mid or self.boundary)!r} ({how})"
        return line + "".join(f"; skipped {str(p)!r}: {why}" for p, why in self.skipped)


def plan_resume(folder: Path | None, resume: bool, from_checkpoint: Path | None) -> ResumePlan:
    """Where :func:`~retain.training.sequence.fit_sequence` starts; see the module docstring.

    Refuses a folder that holds checkpoints unless ``resume`` (or ``from_checkpoint``) is set,
    and ``resume`` without a complete task-boundary checkpoint to continue.
    """
    if from_checkpoint is not None:
        return _requested(Path(from_checkpoint))
    if folder is None:
        if resume:
            raise RetainError("resume=True needs checkpoint_dir= (the folder of the run)")
        return ResumePlan()
    tasks, steps = scan_checkpoints(folder / "tasks"), scan_checkpoints(folder / "steps")
    if tasks.complete and not resume:
        raise RetainError(
            f"{str(folder)!r} already holds checkpoints of a run; pass resume=True to continue it "
            "or choose an empty folder"
        )
    if not resume:
        return ResumePlan()
    skipped = tuple(tasks.skipped + steps.skipped)
    if not tasks.complete:
        why = "".join(f"; {str(p)!r} is not complete: {reason}" for p, reason in skipped)
        raise RetainError(
            f"no complete checkpoint to resume from in {str(folder)!r}{why}; {_AFRESH}"
        )
    boundary = tasks.complete[-1]
    mid = steps.complete[-1] if steps.complete else None
    with _verified(older_checkpoint(boundary)):
        task = checkpoint_task(boundary)
    with _verified(boundary):
        if mid is not None and checkpoint_task(mid) != task:
            mid = None  # left by a finished task: its task's end checkpoint is newer
    return ResumePlan(boundary, mid, False, skipped)


def _requested(path: Path) -> ResumePlan:
    problem = checkpoint_problem(path)
    if problem:
        raise RetainError(
            f"--from-checkpoint {str(path)!r} is not a complete checkpoint ({problem}); pass a "
            "checkpoints/tasks/step-<n> or checkpoints/steps/step-<n> folder"
        )
    with _verified(older_checkpoint(path)):
        position, _ = load_checkpoint(path, model=None, rng=False)
    if position.get("log") is None:
        return ResumePlan(path, None, True)
    task, tasks = int(position["task"]), path.parent.parent / "tasks"
    starts = [p for p in scan_checkpoints(tasks).complete if checkpoint_task(p) == task]
    if not starts:
        raise RetainError(
            f"--from-checkpoint {str(path)!r} is in the middle of task {task + 1}, but "
            f"{str(tasks)!r} holds no complete checkpoint of that task's start; pass a "
            "checkpoints/tasks/step-<n> folder instead"
        )
    return ResumePlan(starts[-1], path, True)


@contextmanager
def _verified(instead: Path | None) -> Iterator[None]:
    """Turn a checkpoint's failed verification (size or SHA-256) into an error that names
    ``instead``, the next older complete checkpoint (None: there is none)."""
    try:
        yield
    except CorruptCheckpointError as exc:
        if instead is None:
            fix = f"no older complete checkpoint is left; {_AFRESH}"
        else:
            flag = f"--from-checkpoint {shlex.quote(str(instead))}"
            fix = f"resume from the next older complete checkpoint with {flag}"
        raise RetainError(f"{exc.detail}; {fix}") from exc


def load_start(plan: ResumePlan, model: nn.Module, strat: Chain) -> tuple[RunState, int]:
    """Load ``plan.boundary`` into ``model`` and ``strat``; returns the run so far (with the
    plan's note recorded) and the task to start from."""
    if plan.boundary is None:
        raise RetainError("load_start needs a plan with a checkpoint; call plan_resume first")
    with _verified(older_checkpoint(plan.boundary)):
        position, _ = load_checkpoint(plan.boundary, model=model, strategies=strat)
    run = RunState.from_position(position)
    run.resumed.append(str(plan.boundary))
    run.resume_notes.append(plan.note())
    return run, int(position["task"])


def checkpoint_task(path: Path) -> int:
    position, _ = load_checkpoint(path, model=None, rng=False)
    return int(position["task"])


def save_checkpoint_of(
    folder: Path | None, kind: str, model: nn.Module, strat: Chain, position: dict[str, Any]
) -> Path | None:
    """A checkpoint of ``model`` and the strategies in ``folder/kind`` (``tasks``: after a task;
    older ones deleted); None when checkpoints are off (``folder`` None)."""
    if folder is None:
        return None
    return save_checkpoint(folder / kind, model=model, strategies=strat, position=position, keep=1)


@dataclass
class TaskCheckpoints:
    """Checkpointing of one task while it trains: resume it mid-task, save every ``every``
    optimizer steps into ``folder/steps`` (older mid-task checkpoints are deleted, ``keep=1``),
    and name the last good checkpoint in an error: the task's newest mid-task checkpoint saved by
    the step asked about, else ``start``, the checkpoint the task began from."""

    folder: Path | None
    every: int
    model: nn.Module
    strategies: Chain
    run: RunState
    task: int
    monitor: ForgettingMonitor | None = None
    start: Path | None = None
    #: ``(task step, path)`` of this task's mid-task checkpoints, oldest first.
    saved: list[tuple[int, str]] = field(default_factory=list)

    def hooks(self, resume_from: Path | None) -> TaskHooks:
        """The :class:`TaskHooks` of the task; ``resume_from``: a mid-task checkpoint to
        continue from (None: start the task)."""
        return TaskHooks(
            resume=None if resume_from is None else self._resume(resume_from),
            after_step=self.after_step,
            last_saved=self.last_saved,
        )

    def _resume(self, path: Path) -> Callable[[Optimizer, LRScheduler | None], TaskLog]:
        def load(optimizer: Optimizer, scheduler: LRScheduler | None) -> TaskLog:
            with _verified(self.start):
                position, tensors = load_checkpoint(
                    path,
                    model=self.model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    strategies=self.strategies,
                )
            self.run.resumed.append(str(path))
            if self.monitor is not None and position.get("monitor") is not None:
                self.monitor.load_state(position["monitor"], tensors)
            log = task_log(position["log"])
            self.saved.append((log.steps, str(path)))
            return log

        return load

    def after_step(self, log: TaskLog, optimizer: Optimizer, scheduler: LRScheduler | None) -> None:
        """Save a checkpoint when ``log.steps`` is a multiple of ``every``."""
        if self.folder is None or not self.every or log.steps % self.every:
            return
        position = self.run.position(self.task, log.steps, log)
        meta, tensors = self.monitor.state() if self.monitor is not None else (None, {})
        position["monitor"] = meta
        path = save_checkpoint(
            self.folder / "steps",
            model=self.model,
            optimizer=optimizer,
            scheduler=scheduler,
            strategies=self.strategies,
            position=position,
            tensors=tensors,
            keep=1,
        )
        self.saved.append((log.steps, str(path)))

    def last_saved(self, step: int) -> str:
        """``"; the last good checkpoint is '<path>'"`` for an error at task step ``step``."""
        if self.saved and self.saved[-1][0] <= step:
            return f"; the last good checkpoint is {self.saved[-1][1]!r}"
        return "" if self.start is None else f"; the last good checkpoint is {str(self.start)!r}"


def task_log(data: dict[str, Any]) -> TaskLog:
    """The :class:`TaskLog` a checkpoint's position holds (:func:`log_dict`'s inverse; the
    monitor's account is left out: a resumed task's monitor starts again)."""
    return TaskLog.model_validate({**data, "monitor": None})
