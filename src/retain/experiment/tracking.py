"""Stream a run's figures to the experiment trackers its config names (``tracking.report_to``).

:func:`run_tracking` starts one tracker run per named tracker
(:mod:`retain.experiment.tracking_backends`) and yields a :class:`RunTracking`, which
:func:`~retain.training.sequence.fit_sequence` calls as its observer
(:mod:`retain.training.observer`), so figures arrive while the run trains. Every figure is logged
at its global optimizer step (step ``s`` of task ``t`` is ``s`` plus the steps of the tasks before
it), one x-axis across tasks:

* ``train/loss``, ``train/lr``: every optimizer step, its mean loss (nats per target) and
  learning rate (``results.json``: ``run.logs[t].losses``, ``.lrs``);
* ``monitor/<capability>/score``, ``monitor/<capability>/degradation``,
  ``monitor/worst_degradation``, ``monitor/task_score``: every forgetting-monitor evaluation, at its
  step (relative degradation: 0.05 = 5 % worse; earlier tasks are ``task/<name>``;
  ``run.logs[t].monitor.history``);
* ``budget/strength``, ``budget/worst_degradation``: every forgetting-budget update, the tuned
  strength and the worst relative degradation it reacted to (``budget.history``);
* ``score/<task>``: at the step each task ``t`` ended, every task's test score, row ``t`` of the
  score matrix (``run.matrix[t]``);
* ``metrics/<name>``: at the last step, ``average_accuracy``, ``backward_transfer``,
  ``forward_transfer`` and ``average_forgetting`` (``run.metrics``).

Undefined values (None, NaN) are left out.

The resolved config goes along as hyper-parameters (flat ``dotted.key`` settings, the ``sweep``
section left out: it lists the other variants). Runs are named ``<name>/<variant>/seed<k>`` and
grouped by the experiment's name. Only the main process logs (under ``torchrun`` the others get
no trackers). A run that fails or is interrupted is closed as failed; resumed, it logs into a new
tracker run from its checkpoint on (TensorBoard: the same folder, where the steps the interrupted
attempt took after that checkpoint then show twice).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from retain.distributed import is_main_process
from retain.experiment.config import ExperimentConfig, config_to_yaml
from retain.experiment.tracking_backends import Backend, Param, TrackerRun, open_backend
from retain.records.run import RunRecord
from retain.training.budget import ForgettingBudget
from retain.training.observer import StepEvent, TaskEndEvent

__all__ = ["RunTracking", "flat_params", "run_tracking", "tracker_run"]


def flat_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, Param]:
    """Nested settings as ``dotted.key: value`` pairs; list items by index, a list of plain
    values as JSON, None as ``"null"``.

    >>> flat_params({"training": {"lr": 0.01}, "tasks": [{"dataset": "digits"}], "seeds": [0]})
    {'training.lr': 0.01, 'tasks.0.dataset': 'digits', 'seeds': '[0]'}
    """
    flat: dict[str, Param] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_params(value, f"{name}."))
        elif isinstance(value, list) and any(isinstance(v, Mapping | list) for v in value):
            flat.update(flat_params({str(k): v for k, v in enumerate(value)}, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = "null" if value is None else value
    return flat


def tracker_run(config: ExperimentConfig, directory: Path) -> TrackerRun:
    """The tracker run of ``config`` (its first seed), writing under ``directory``."""
    seed, variant = config.seeds[0], config.variant_label
    settings = config.model_dump(mode="json", exclude={"sweep"})
    safe = re.sub(r"[^A-Za-z0-9._+=-]+", "_", variant).strip("_") or "run"
    return TrackerRun(
        directory=directory,
        project=config.tracking.project or config.name,
        group=config.name,
        name=f"{config.name}/{variant}/seed{seed}",
        folder=f"{config.name}/{safe}/seed{seed}",
        params=flat_params(settings),
        config=settings,
        config_yaml=config_to_yaml(config),
        tags={"variant": variant, "seed": str(seed)},
    )


class RunTracking:
    """The figures of one run, from the engine's events, sent to every backend.

    Implements :class:`~retain.training.observer.SequenceObserver`; ``budget``: the run's
    forgetting budget, whose updates are streamed as they happen.
    """

    def __init__(self, backends: list[Backend], budget: ForgettingBudget | None = None) -> None:
        self.backends = backends
        self.budget = budget
        self._monitor_seen = 0
        self._budget_seen = 0

    def on_step(self, event: StepEvent) -> None:
        """Log the step's loss and learning rate, and new monitor and budget evaluations."""
        if not self.backends:
            return
        self._monitor(event.monitor, event.global_step - event.step)
        history = self.budget.history if self.budget is not None else []
        if len(history) > self._budget_seen and history[-1]["step"] == event.step:
            entry = history[-1]
            figures = {"strength": entry["strength"], "worst_degradation": entry["degradation"]}
            self._log({f"budget/{k}": v for k, v in figures.items()}, event.global_step)
        self._budget_seen = len(history)
        figures = {"train/loss": event.log.losses[-1], "train/lr": event.log.lrs[-1]}
        self._log(figures, event.global_step)

    def on_task_end(self, event: TaskEndEvent) -> None:
        """Log the task's last monitor evaluation and its row of the score matrix."""
        if not self.backends:
            return
        self._monitor(event.monitor, event.global_step - event.log.steps)
        self._monitor_seen = 0  # the next task has a monitor of its own
        self._log({f"score/{name}": s for name, s in event.scores.items()}, event.global_step)

    def finish(self, record: RunRecord) -> None:
        """Log the final metrics of ``record`` (the run's ``results.json``) at its last step."""
        if not self.backends:
            return
        step = sum(log.steps for log in record.run.logs)
        found = record.run.metrics
        every = ((k, getattr(found, k)) for k in type(found).model_fields)
        metrics = {
            f"metrics/{k}": float(v)
            for k, v in every
            if isinstance(v, (int, float)) and math.isfinite(v)
        }
        for backend in self.backends:
            backend.finish(metrics, step)

    def _monitor(self, history: Sequence[Mapping[str, Any]], task_start: int) -> None:
        for entry in history[self._monitor_seen :]:
            figures = {f"{name}/score": v for name, v in entry["scores"].items()}
            figures.update({f"{name}/degradation": v for name, v in entry["degradation"].items()})
            figures.update(
                worst_degradation=entry["worst_degradation"], task_score=entry["task_score"]
            )
            self._log({f"monitor/{k}": v for k, v in figures.items()}, task_start + entry["step"])
        self._monitor_seen = len(history)

    def _log(self, figures: Mapping[str, float | None], step: int) -> None:
        """Send the defined figures (None and NaN are left out) at ``step``."""
        defined = {k: float(v) for k, v in figures.items() if v is not None and not math.isnan(v)}
        for backend in self.backends if defined else []:
            backend.log(defined, step)


@contextmanager
def run_tracking(
    config: ExperimentConfig,
    directory: Path,
    budget: ForgettingBudget | None = None,
    say: Callable[[str], None] | None = None,
) -> Iterator[RunTracking]:
    """The trackers ``config.tracking.report_to`` names, started for this run and closed on exit
    (as failed when an exception leaves the block).

    ``directory``: where they write when ``tracking.dir`` is null (``<run>/tracking``, or the
    sweep folder's). Off, or on any process but the main one, the tracking has no backends and
    costs nothing. ``say`` is told where the figures go.
    """
    names = config.tracking.report_to if is_main_process() else []
    folder = Path(config.tracking.dir) if config.tracking.dir else directory
    backends: list[Backend] = []
    ok = False
    try:
        if names:
            folder.mkdir(parents=True, exist_ok=True)
            run = tracker_run(config, folder)
            for name in names:
                backends.append(open_backend(name, run))
            if say is not None:
                say(f"  streaming to {', '.join(names)} in {folder} as {run.name}")
        yield RunTracking(backends, budget)
        ok = True
    finally:
        for backend in backends:
            backend.close(ok)
