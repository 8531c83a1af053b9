"""Train a sequence of tasks and record the score matrix the continual-learning metrics need.

:func:`fit_sequence` trains tasks ``0 .. T-1`` one after another with :func:`train_task` and,
after each task ``t``, scores *every* task's test data (seen and unseen), filling row ``t`` of
``R[t][i]``; the row scored before any training is the baseline ``b``. From ``R`` and ``b`` it
computes ACC, BWT, FWT (Lopez-Paz & Ranzato 2017) and average forgetting (Chaudhry et al. 2018)
with :mod:`retain.metrics`. :class:`RunResult` keeps all of it, with the per-task losses,
timings, the strategies, the config, the seed and the library versions, and saves it as strict
JSON (``NaN`` -> ``null``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from retain.data.permuted import TaskSplit
from retain.data.task import Task
from retain.errors import RetainError
from retain.evaluation.task_accuracy import task_accuracy
from retain.experiment.run_dir import write_json
from retain.metrics import (
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forward_transfer,
)
from retain.strategies.base import Strategy
from retain.strategies.chain import as_chain
from retain.training.loop import TaskLog, TrainConfig, train_task

__all__ = ["RunResult", "fit_sequence", "library_versions"]

_PACKAGES = ("retain", "torch", "transformers", "peft")


def library_versions() -> dict[str, str]:
    """Versions of retain, torch, transformers and peft (``"not installed"`` when absent)."""
    found: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


@dataclass
class RunResult:
    """Everything one task-sequence run produced.

    Attributes:
        tasks: task names, in training order.
        matrix: ``R[t][i]``, the score on task ``i``'s test data after training task ``t``
            (``T x T``; every task scored after every task, so forward transfer is defined).
        baseline: ``b[i]``, the score on task ``i`` before any training.
        metrics: ``average_accuracy``, ``backward_transfer``, ``forward_transfer`` and
            ``average_forgetting`` of ``matrix`` (``NaN`` when undefined, e.g. ``T = 1``).
        logs: per task ``{"task", "steps", "losses", "stopped", "stop_reason"}``.
        strategies: the strategies' ``describe()``.
        config: the :class:`TrainConfig` as a dict (per task the seed is ``seed * 1000 + t``).
        seed: the ``torch.manual_seed`` set at the start.
        seconds: wall-clock seconds, ``"train/<task>"``, ``"eval/<task>"`` and ``"eval/baseline"``.
        versions: library versions (:func:`library_versions`).
    """

    tasks: list[str]
    matrix: list[list[float]]
    baseline: list[float]
    metrics: dict[str, float]
    logs: list[dict[str, Any]]
    strategies: str
    config: dict[str, Any]
    seed: int
    seconds: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=library_versions)

    def to_dict(self) -> dict[str, Any]:
        """The result as plain Python data (``NaN`` kept; :meth:`save` turns it into ``null``)."""
        return asdict(self)

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` to ``path`` as indented strict JSON, atomically."""
        write_json(Path(path), self.to_dict())


def _log_dict(log: TaskLog) -> dict[str, Any]:
    return {
        "task": log.task,
        "steps": log.steps,
        "losses": list(log.losses),
        "stopped": log.stopped,
        "stop_reason": log.stop_reason,
    }


def _check_splits(splits: Sequence[TaskSplit]) -> list[str]:
    if len(splits) == 0:
        raise RetainError("fit_sequence needs at least one task; pass a non-empty list of splits")
    names = [split.train.name for split in splits]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise RetainError(
                f"task name {name!r} appears twice in the sequence; give every task its own name"
            )
        seen.add(name)
    return names


def fit_sequence(
    model: nn.Module,
    splits: Sequence[TaskSplit],
    strategies: Strategy | Sequence[Strategy] | None = None,
    config: TrainConfig | None = None,
    score: Callable[[nn.Module, Task], float] = task_accuracy,
    seed: int = 0,
    progress: bool | None = None,
) -> tuple[nn.Module, RunResult]:
    """Train ``splits`` in order; returns the (possibly wrapped) model and a :class:`RunResult`.

    Seeds ``torch.manual_seed(seed)``, calls ``strategies.prepare(model)`` once, scores every
    test task (the baseline ``b``), then for each task ``t`` trains on ``splits[t].train`` with
    ``replace(config, seed=config.seed * 1000 + t)`` (its own data order) and scores every test
    task into row ``t`` of ``R``. Metrics (higher score is better): ``ACC = mean_i R[T-1, i]``,
    ``BWT = mean_{i<T-1} (R[T-1, i] - R[i, i])``, ``FWT = mean_{i>=1} (R[i-1, i] - b[i])``
    (Lopez-Paz & Ranzato, NeurIPS 2017) and average forgetting
    ``mean_{i<T-1} (max_{t<T-1} R[t, i] - R[T-1, i])`` (Chaudhry et al., ECCV 2018).
    ``progress``: a tqdm bar over tasks (None: only on a terminal).
    """
    names = _check_splits(splits)
    config = config or TrainConfig()
    torch.manual_seed(seed)
    strat = as_chain(strategies)
    model = strat.prepare(model)
    seconds: dict[str, float] = {}

    def evaluate(label: str) -> list[float]:
        start = time.perf_counter()
        row = [float(score(model, split.test)) for split in splits]
        seconds[f"eval/{label}"] = time.perf_counter() - start
        return row

    baseline = evaluate("baseline")
    matrix: list[list[float]] = []
    logs: list[dict[str, Any]] = []
    disable = None if progress is None else not progress
    for t, split in enumerate(tqdm(splits, desc="tasks", unit="task", disable=disable)):
        start = time.perf_counter()
        log = train_task(model, split.train, strat, replace(config, seed=config.seed * 1000 + t))
        seconds[f"train/{names[t]}"] = time.perf_counter() - start
        logs.append(_log_dict(log))
        matrix.append(evaluate(names[t]))
    metrics = {
        "average_accuracy": average_accuracy(matrix),
        "backward_transfer": backward_transfer(matrix),
        "forward_transfer": forward_transfer(matrix, baseline),
        "average_forgetting": average_forgetting(matrix),
    }
    result = RunResult(
        tasks=names,
        matrix=matrix,
        baseline=baseline,
        metrics=metrics,
        logs=logs,
        strategies=strat.describe(),
        config=asdict(config),
        seed=seed,
        seconds=seconds,
    )
    return model, result
