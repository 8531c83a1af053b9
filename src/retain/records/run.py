"""The record of one run: ``results.json`` of a run directory (format ``retain.run/1``).

:class:`RunRecord` is what ``retain run`` writes and every run report reads. Its ``run`` section
is the :class:`RunResult` that :func:`retain.training.sequence.fit_sequence` returns from Python,
so a notebook's result and a command's result are the same data. Training fills a
:class:`TaskLog` per task while it runs; :class:`MonitorResult` is the forgetting monitor's
account of a task.

Scores ``R[t][i]`` are the score of task ``i`` after training task ``t``; metrics follow the
score's direction (``score.higher_is_better``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, computed_field, field_validator, model_validator

from retain.atomic_files import write_json
from retain.records.base import Num, Part, Record
from retain.records.parts import CkaLayer, Interval, OutputShift, Score

__all__ = [
    "BudgetEval",
    "BudgetRecord",
    "DriftRecord",
    "InterferenceRecord",
    "InterferenceStep",
    "InterferenceSummary",
    "LayerLr",
    "MonitorEval",
    "MonitorResult",
    "MonitorSettings",
    "RunRecord",
    "RunResult",
    "SequenceMetrics",
    "ShiftRecord",
    "SuiteScores",
    "TaskLog",
]


class MonitorEval(Part):
    """One evaluation of the forgetting monitor."""

    step: int
    """Optimizer step within the task (0 = the task's start)."""
    scores: dict[str, Num] = {}
    """Every watched capability's score."""
    degradation: dict[str, Num] = {}
    """Every capability's relative degradation from its baseline (positive = worse)."""
    worst_capability: str | None = None
    """The capability with the largest degradation."""
    worst_degradation: Num = float("nan")
    """Its relative degradation (positive = worse)."""
    task_score: Num = float("nan")
    """The new task's score at this step (undefined when not measured)."""
    within_budget: bool = True
    """No capability degraded beyond the budget."""


class MonitorResult(Part):
    """What the forgetting monitor saw over one task."""

    stopped: bool
    """The budget was exceeded for ``patience`` consecutive evaluations."""
    reason: str
    """``completed``, or why training stopped."""
    best_step: int | None = None
    """Optimizer step of the best within-budget weights (0 = the start), or None."""
    restored: bool = False
    """The best weights were loaded back at the end."""
    baseline: dict[str, Num] = {}
    """The baseline score of every capability."""
    history: list[MonitorEval]
    """One entry per evaluation (step 0 is the start)."""
    final_worst_degradation: Num = float("nan")
    """Worst relative degradation of the weights the model ends with."""


class TaskLog(Part):
    """What happened while training one task: the loss and learning rate of every optimizer step.

    Training appends to it as it goes (:func:`retain.training.loop.train_task`)."""

    task: str
    """The task's name."""
    losses: list[Num] = []
    """``losses[k]``: mean loss of step ``k + 1``'s global batch (nats per target)."""
    lrs: list[Num] = []
    """``lrs[k]``: the first parameter group's learning rate used by step ``k + 1``."""
    epochs_done: int = Field(default=0, ge=0)
    """Epochs whose ``on_epoch_end`` has run."""
    stopped: bool = False
    """The forgetting monitor cut training short."""
    stop_reason: str = ""
    """Why it did (empty when it did not)."""
    monitor: MonitorResult | None = None
    """The monitor's account of the task (None without a monitor)."""

    @model_validator(mode="before")
    @classmethod
    def _steps_are_derived(cls, data: Any) -> Any:
        if isinstance(data, dict) and "steps" in data:
            data = {k: v for k, v in data.items() if k != "steps"}
        return data

    @computed_field  # type: ignore[prop-decorator]
    @property
    def steps(self) -> int:
        """Optimizer steps taken (``len(losses)``)."""
        return len(self.losses)


class SequenceMetrics(Part):
    """The sequence's summary metrics (``NaN`` / ``null`` when undefined, e.g. one task)."""

    average_accuracy: Num = float("nan")
    """``ACC = mean_i R[T-1][i]``."""
    backward_transfer: Num = float("nan")
    """``BWT = mean_{i<T-1} (R[T-1][i] - R[i][i])`` (negative = forgot)."""
    forward_transfer: Num = float("nan")
    """``FWT = mean_{i>=1} (R[i-1][i] - b[i])``."""
    average_forgetting: Num = float("nan")
    """``mean_{i<T-1} (max_{t<T-1} R[t][i] - R[T-1][i])`` (positive = forgot)."""


class SuiteScores(Part):
    """Capability scores of the suite before the sequence and after each task."""

    name: str
    """The suite's name."""
    baseline: dict[str, Num]
    """Every capability's score before any training."""
    after: list[dict[str, Num]]
    """Per task, every capability's score after it."""
    relative_degradation: list[dict[str, Num]]
    """Per task, ``(before - after) / |before|`` with the sign making positive = worse."""
    intervals: list[dict[str, Interval | None]] = []
    """Per task, each capability's 95 % paired bootstrap interval of the relative degradation
    against the baseline, on the probe's examples (None when the probe gives no per-example
    scores; empty in files written before intervals)."""

    def score_after(self, task: int, capability: str) -> float:
        """``capability``'s score after task ``task`` (``NaN`` when not measured)."""
        scores = self.after[task] if task < len(self.after) else {}
        return scores.get(capability, math.nan)

    def degradation_after(self, task: int, capability: str) -> float:
        """``capability``'s relative degradation after task ``task`` (``NaN`` when undefined)."""
        found = self.relative_degradation
        changes = found[task] if task < len(found) else {}
        return changes.get(capability, math.nan)

    def interval_after(self, task: int, capability: str) -> Interval | None:
        """``capability``'s interval after task ``task`` (None when not measured)."""
        found = self.intervals[task] if task < len(self.intervals) else {}
        return found.get(capability)


class RunResult(Part):
    """Everything one task-sequence run produced (the ``run`` section of ``results.json``)."""

    tasks: list[str] = Field(min_length=1)
    """Task names, in training order."""
    matrix: list[list[Num]] = Field(min_length=1)
    """``R[t][i]``: the score on task ``i``'s test data after training task ``t`` (``T x T``;
    ``joint``: only the last row is measured, the others are ``null``; ``single``: row ``t`` is
    the model trained on task ``t`` alone)."""
    baseline: list[Num]
    """``b[i]``: the score on task ``i`` before any training."""
    metrics: SequenceMetrics
    """ACC, BWT, FWT and average forgetting of ``matrix``."""
    logs: list[TaskLog]
    """Per task, its training log."""
    strategies: str
    """The strategies' ``describe()``."""
    config: dict[str, Any]
    """The training settings (per task the data order is seeded with ``seed * 1000 + t``)."""
    seed: int = Field(ge=0)
    """The seed of Python, NumPy and torch at the start."""
    suite: SuiteScores | None = None
    """Capability scores (None without a suite; files of earlier versions hold ``{}``)."""
    seconds: dict[str, Num] = {}
    """Wall-clock seconds: ``train/<task>``, ``eval/<task>`` and ``eval/baseline``."""
    versions: dict[str, str] = {}
    """Library versions."""
    resumed: list[str] = []
    """The checkpoints the run was resumed from (empty for an uninterrupted run)."""
    resume_notes: list[str] = []
    """Per resume, one line naming the checkpoint chosen and each incomplete one skipped."""
    score: Score | None = None
    """What ``matrix`` measures (None in files written before it was kept here)."""
    mode: Literal["sequential", "joint", "single"] = "sequential"
    """``sequential``: the tasks in order; ``joint`` / ``single``: a reference of a comparison,
    all tasks' data mixed and trained once / each task from the starting weights alone
    (:mod:`retain.training.references`)."""

    @field_validator("suite", mode="before")
    @classmethod
    def _empty_suite_is_none(cls, value: Any) -> Any:
        return None if value == {} else value  # how files before the typed records said it

    def save(self, path: str | Path) -> None:
        """Write the result to ``path`` as indented strict JSON, atomically (the ``run`` section
        of a run's ``results.json``; ``retain report FILE --out DIR`` turns it into a report)."""
        write_json(Path(path), self.to_json())


class MonitorSettings(Part):
    """The forgetting monitor's settings."""

    max_degradation: float
    """The budget: largest relative degradation of any capability allowed."""
    patience: int = 1
    """Consecutive evaluations over the budget before stopping."""
    eval_every: int = 10
    """Optimizer steps between evaluations."""
    restore_best: bool = True
    """Load the best within-budget weights back at the end of a task."""


class BudgetEval(Part):
    """One evaluation of the forgetting budget controller."""

    step: float
    """Optimizer step within the task."""
    degradation: Num
    """Worst relative degradation measured (positive = worse)."""
    strength: Num
    """The penalty strength it set."""


class BudgetRecord(Part):
    """The forgetting budget: its limit and, per task, each evaluation."""

    max_degradation: float
    """The budget."""
    history: list[list[BudgetEval]]
    """Per task, the controller's evaluations."""


class DriftRecord(Part):
    """Relative parameter drift per layer from the starting weights, after each task."""

    layers: list[str]
    """Layer names."""
    after: list[list[Num]]
    """Per task, ``||θ_t − θ_0|| / ||θ_0||`` of every layer (dimensionless)."""


class LayerLr(Part):
    """The learning rate of one parameter group."""

    group: str
    """The group's name."""
    lr: float
    """Its learning rate."""


class InterferenceStep(Part):
    """Gradient interference measured at one optimizer step."""

    task: str
    """The task being trained."""
    step: int
    """Optimizer step within the task."""
    global_step: int
    """Optimizer step over the whole sequence."""
    cosine: Num
    """``<g_step, g_prior> / (||g_step|| ||g_prior||)`` (dimensionless, -1 to 1)."""
    layers: dict[str, Num]
    """The same cosine per layer."""


class InterferenceSummary(Part):
    """Interference over the whole run."""

    measured: int
    """Steps measured."""
    conflicting: Num
    """Fraction of measured steps with a negative cosine."""
    mean_cosine: Num
    """Mean cosine over measured steps."""
    layers: dict[str, Num] = {}
    """Mean cosine per layer."""


class InterferenceRecord(Part):
    """Gradient interference between each step and a prior capability."""

    every: int
    """Optimizer steps between measurements."""
    samples: int
    """Examples in the prior capability's fixed reference sample."""
    prior: str
    """What the prior capability is (general text, or earlier tasks)."""
    records: list[InterferenceStep]
    """Every measurement."""
    summary: InterferenceSummary
    """Their summary."""


class ShiftRecord(Part):
    """Representational and output shift of the final model from the reference model."""

    data: str
    """The text or examples compared."""
    reference: str
    """The reference model: ``start``, or ``after <first task>``."""
    representation: list[CkaLayer] | None
    """Linear CKA per layer (None when not measured)."""
    output: OutputShift | None
    """The next-token distribution's shift (causal LMs; None otherwise)."""
    skipped: dict[str, str] = {}
    """Measurements left out, with the reason."""


class RunRecord(Record):
    """Everything one run measured: identity (name, variant, seed, model), the score, the task
    sequence's matrix and logs (run), and optional sections (null when not used)."""

    FORMAT: ClassVar[str] = "retain.run/1"
    WRITER: ClassVar[str] = "retain run"

    format: Literal["retain.run/1"] = "retain.run/1"
    """The file's format and version."""
    name: str
    """The experiment's name."""
    description: str = ""
    """The experiment's description."""
    variant: str
    """The variant's label (its strategies)."""
    seed: int = Field(ge=0)
    """The run's seed."""
    model: str
    """The model's name."""
    score: Score
    """The score of the task sequence."""
    run: RunResult
    """The task sequence's matrix, metrics and logs."""
    monitor: MonitorSettings | None = None
    """The forgetting monitor's settings (None without one)."""
    budget: BudgetRecord | None = None
    """The forgetting budget (None without one)."""
    drift: DriftRecord | None = None
    """Parameter drift per layer (None when not measured)."""
    layer_lrs: list[LayerLr] | None = None
    """Learning rate of each parameter group (layer-wise learning rates only)."""
    unfreezing: list[list[Annotated[list[int], Field(min_length=2, max_length=2)]]] | None = None
    """Gradual unfreezing: per task, ``[global step, trainable blocks]`` pairs."""
    interference: InterferenceRecord | None = None
    """Gradient interference during training (None when not measured)."""
    shift: ShiftRecord | None = None
    """Representational and output shift (None when not measured)."""
    seconds: Num = float("nan")
    """Wall-clock seconds of the whole run."""

    @classmethod
    def of(
        cls,
        run: RunResult,
        *,
        name: str = "fit_sequence",
        model: str = "model",
        variant: str | None = None,
        description: str = "",
    ) -> RunRecord:
        """The record of a run made in Python (:func:`~retain.training.sequence.fit_sequence`):
        ``variant`` defaults to the strategies' description (``naive`` without any), the score
        to the run's own (an unnamed ``score``, higher is better, when it has none)."""
        score = run.score or Score(name="score", higher_is_better=True)
        label = variant or (run.strategies if run.strategies not in ("", "[]") else "naive")
        return cls(
            name=name,
            description=description,
            variant=label,
            seed=run.seed,
            model=model,
            score=score,
            run=run,
            seconds=sum(v for v in run.seconds.values() if math.isfinite(v)),
        )

    @classmethod
    def upgrade(cls, data: dict[str, Any], found: str) -> dict[str, Any]:
        """Files written before the typed records held ``{}`` for a run without a suite."""
        run = data.get("run")
        if isinstance(run, dict) and run.get("suite") == {}:
            data = {**data, "run": {**run, "suite": None}}
        return super().upgrade(data, found)
