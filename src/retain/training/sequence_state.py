"""What a task-sequence run keeps between tasks and in its checkpoints, and how it resumes.

:class:`RunState` is everything :func:`~retain.training.sequence.fit_sequence` has produced so far
(the rows of R, the logs, the suite scores, timings); it is saved as the ``position`` of every
checkpoint. Task-boundary checkpoints go to ``<checkpoint_dir>/tasks``, mid-task ones to
``<checkpoint_dir>/steps`` (:mod:`retain.training.checkpoint`). A mid-task resume loads the task's
boundary checkpoint, lets ``begin_task`` run exactly as the original run did, and then loads the
mid-task checkpoint through :func:`task_hooks` (weights, optimizer, scheduler, strategies, monitor
and RNG).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from retain.errors import RetainError
from retain.strategies.chain import Chain
from retain.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from retain.training.loop import TaskHooks, TaskLog
from retain.training.monitor import ForgettingMonitor

__all__ = [
    "RunState",
    "checkpoint_task",
    "existing_checkpoints",
    "log_dict",
    "save_checkpoint_of",
    "task_hooks",
    "task_log",
]


def log_dict(log: TaskLog) -> dict[str, Any]:
    return {
        "task": log.task,
        "steps": log.steps,
        "losses": list(log.losses),
        "lrs": list(log.lrs),
        "epochs_done": log.epochs_done,
        "stopped": log.stopped,
        "stop_reason": log.stop_reason,
        "monitor": None if log.monitor is None else log.monitor.to_dict(),
    }


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

    def position(self, task: int, step: int, log: TaskLog | None) -> dict[str, Any]:
        data = asdict(self)
        data.update(task=task, step=step, global_step=step + sum(x["steps"] for x in self.logs))
        data["log"] = None if log is None else log_dict(log)
        return data

    @classmethod
    def from_position(cls, data: dict[str, Any]) -> RunState:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def existing_checkpoints(folder: Path | None, resume: bool) -> tuple[Path | None, Path | None]:
    if folder is None:
        if resume:
            raise RetainError("resume=True needs checkpoint_dir= (the folder of the run)")
        return None, None
    boundary = latest_checkpoint(folder / "tasks")
    mid = latest_checkpoint(folder / "steps")
    if boundary is not None and not resume:
        raise RetainError(
            f"{str(folder)!r} already holds checkpoints of a run; pass resume=True to continue it "
            "or choose an empty folder"
        )
    if resume and boundary is None:
        return None, None  # nothing saved yet: start from the beginning
    return boundary, mid


def checkpoint_task(path: Path) -> int:
    position, _ = load_checkpoint(path, model=None, rng=False)
    return int(position["task"])


def save_checkpoint_of(
    folder: Path | None, kind: str, model: nn.Module, strat: Chain, position: dict[str, Any]
) -> None:
    if folder is not None:
        save_checkpoint(folder / kind, model=model, strategies=strat, position=position, keep=1)


def task_hooks(
    folder: Path | None,
    every: int,
    model: nn.Module,
    strat: Chain,
    run: RunState,
    t: int,
    watch: ForgettingMonitor | None,
    resume_mid: Path | None,
) -> TaskHooks:
    saved: list[str] = []

    def resume(path: Path) -> Callable[[Optimizer, LRScheduler | None], TaskLog]:
        def load(optimizer: Optimizer, scheduler: LRScheduler | None) -> TaskLog:
            position, tensors = load_checkpoint(
                path, model=model, optimizer=optimizer, scheduler=scheduler, strategies=strat
            )
            run.resumed.append(str(path))
            if watch is not None and position.get("monitor") is not None:
                watch.load_state(position["monitor"], tensors)
            saved.append(str(path))
            return task_log(position["log"])

        return load

    def after_step(log: TaskLog, optimizer: Optimizer, scheduler: LRScheduler | None) -> None:
        if folder is None or not every or log.steps % every:
            return
        position = run.position(t, log.steps, log)
        meta, tensors = watch.state() if watch is not None else (None, {})
        position["monitor"] = meta
        path = save_checkpoint(
            folder / "steps",
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            strategies=strat,
            position=position,
            tensors=tensors,
            keep=1,
        )
        saved.append(str(path))

    def last_saved() -> str:
        return f"; the last checkpoint is {saved[-1]!r}" if saved else ""

    return TaskHooks(
        resume=None if resume_mid is None else resume(resume_mid),
        after_step=after_step,
        last_saved=last_saved,
    )


def task_log(data: dict[str, Any]) -> TaskLog:
    log = TaskLog(str(data["task"]))
    log.losses = [float(x) for x in data["losses"]]
    log.lrs = [float(x) for x in data["lrs"]]
    log.epochs_done = int(data["epochs_done"])
    log.stopped, log.stop_reason = bool(data["stopped"]), str(data["stop_reason"])
    return log
