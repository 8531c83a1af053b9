"""Summary figures of run results and their aggregation over seeds, with the Pareto front.

Input is a run's :class:`~retain.records.run.RunRecord` (``results.json``, format
``retain.run/1``). All functions are pure: they read records and return new ones
(:class:`~retain.records.comparison.RunSummary`, :class:`~retain.records.comparison.ComparisonRow`).
Undefined figures (a one-task run's transfer, a run without a capability suite) are ``NaN``, and
``null`` once written.

Figures of one run (:func:`run_summary`), for scores ``R[t][i]`` (task ``i`` after training task
``t``, ``T`` tasks):

* ``new_task_score`` (plasticity): ``mean_t R[t][t]``, each task's score right after training it;
* ``average_accuracy``: ``mean_i R[T-1][i]``;
* ``backward_transfer``: ``mean_{i<T-1} (R[T-1][i] - R[i][i])`` (negative = forgot);
* ``forgetting``: Chaudhry et al.'s ``mean_{i<T-1} (max_{t<T-1} R[t][i] - R[T-1][i])``;
* ``capability_degradation``: the worst relative degradation (positive = worse, 0.05 = 5 %) over
  the suite's capabilities after the last task;
* ``seconds``: wall-clock seconds of the whole run.

Transfer and forgetting follow the score's direction (``record.score.higher_is_better``),
so positive forgetting always means *got worse*; see :mod:`retain.metrics`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from retain.errors import RetainError
from retain.metrics import average_accuracy, average_forgetting, backward_transfer
from retain.records.comparison import SUMMARY_KEYS, ComparisonRow, MeanSd, RunSummary
from retain.records.run import RunRecord

__all__ = [
    "SUMMARY_KEYS",
    "aggregate",
    "forgetting_cost_key",
    "pareto_optimal",
    "run_summary",
]


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else math.nan


def run_summary(record: RunRecord) -> RunSummary:
    """The summary figures of one run (see the module docstring), ``NaN`` where undefined
    (``tests/report/test_summary.py`` works them out by hand)."""
    matrix = record.run.matrix
    if not matrix:
        raise RetainError("results have an empty score matrix run.matrix; re-run the experiment")
    hib = record.score.higher_is_better
    diagonal = [row[t] for t, row in enumerate(matrix) if t < len(row) and not math.isnan(row[t])]
    if record.run.mode != "sequential":
        return _reference_summary(record, matrix[-1] if record.run.mode == "joint" else diagonal)
    worst = math.nan
    suite = record.run.suite
    if suite is not None and suite.relative_degradation:
        values = [v for v in suite.relative_degradation[-1].values() if math.isfinite(v)]
        worst = max(values) if values else math.nan
    return RunSummary(
        new_task_score=sum(diagonal) / len(diagonal) if diagonal else math.nan,
        average_accuracy=_finite(average_accuracy(matrix)),
        backward_transfer=_finite(backward_transfer(matrix, higher_is_better=hib)),
        forgetting=_finite(average_forgetting(matrix, higher_is_better=hib)),
        capability_degradation=worst,
        seconds=_finite(record.seconds),
    )


def _reference_summary(record: RunRecord, scores: Sequence[float]) -> RunSummary:
    """A reference's figures: its scores' mean as both the new-task score and the average
    accuracy (``joint``: every task after the joint training; ``single``: each task trained
    alone), and nothing forgotten, since nothing came after (``NaN``)."""
    kept = [v for v in scores if math.isfinite(v)]
    mean = sum(kept) / len(kept) if kept else math.nan
    nan = math.nan
    return RunSummary(
        new_task_score=mean,
        average_accuracy=mean,
        backward_transfer=nan,
        forgetting=nan,
        capability_degradation=nan,
        seconds=_finite(record.seconds),
    )


def _mean_sd(values: Sequence[float]) -> MeanSd:
    """Mean, sample sd and the mean's 95 % Student-t interval of the finite ``values``."""
    kept = [v for v in values if math.isfinite(v)]
    if not kept:
        return MeanSd(mean=math.nan, sd=math.nan)
    mean = statistics.fmean(kept)
    if len(kept) < 2:
        return MeanSd(mean=mean, sd=0.0)
    from scipy.stats import t as student_t

    sd = statistics.stdev(kept)
    half = float(student_t.ppf(0.975, len(kept) - 1)) * sd / math.sqrt(len(kept))
    return MeanSd(mean=mean, sd=sd, low=mean - half, high=mean + half)


def forgetting_cost_key(rows: Sequence[ComparisonRow]) -> str:
    """The figure used as forgetting cost on the Pareto front (lower is better).

    ``"capability_degradation"`` (worst relative degradation of the suite after the last task)
    when every row has its mean, else ``"forgetting"`` (average forgetting of the tasks).
    """
    has_all = bool(rows) and all(math.isfinite(row.capability_degradation.mean) for row in rows)
    return "capability_degradation" if has_all else "forgetting"


def aggregate(records: Sequence[RunRecord]) -> list[ComparisonRow]:
    """One row per variant (first-seen order) with mean and sample sd of every summary figure.

    ``sd`` is the sample standard deviation (``n - 1`` in the denominator), 0.0 for a single
    run; runs where a figure is undefined are skipped for that figure, and a figure undefined in
    every run has mean and sd ``NaN``. ``strategies`` is the first run's. ``pareto`` marks the
    variants on the Pareto front of (``new_task_score`` mean, forgetting cost mean)
    (:func:`pareto_optimal`, :func:`forgetting_cost_key`); for a lower-is-better score the
    new-task score is negated first. Reference baselines (runs of mode ``joint`` or ``single``)
    get ``reference`` set and stay off the front; with a ``joint`` row and a higher-is-better
    score every row's ``of_joint`` is its mean average accuracy over joint's. Runs scored with
    different metrics cannot be compared: :class:`RetainError`.
    """
    if not records:
        raise RetainError("nothing to aggregate: pass at least one run's results")
    scores = {(r.score.name, r.score.higher_is_better) for r in records}
    if len(scores) > 1:
        by_score: dict[str, set[str]] = {}
        for r in records:
            by_score.setdefault(r.score.name, set()).add(f"{r.name}/{r.variant}")
        which = "; ".join(
            f"{n} ({', '.join(sorted(runs))})" for n, runs in sorted(by_score.items())
        )
        raise RetainError(
            f"runs are scored with different metrics: {which}; compare runs of one score"
        )
    hib = next(iter(scores))[1]
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(record.variant, []).append(record)
    rows: list[ComparisonRow] = []
    for variant, runs in groups.items():
        summaries = [run_summary(r) for r in runs]
        figures = {key: _mean_sd([getattr(s, key) for s in summaries]) for key in SUMMARY_KEYS}
        same = {"variant": variant, "strategies": runs[0].run.strategies, "n": len(runs)}
        mode = runs[0].run.mode
        same["reference"] = None if mode == "sequential" else mode
        rows.append(
            ComparisonRow.model_validate({**same, "seeds": [r.seed for r in runs], **figures})
        )
    variants = [r for r in rows if r.reference is None]
    cost = forgetting_cost_key(variants)
    sign = 1.0 if hib else -1.0
    points = [(sign * r.new_task_score.mean, r.figure(cost).mean) for r in variants]
    for row, optimal in zip(variants, pareto_optimal(points), strict=True):
        row.pareto = optimal
    joint = next((r.average_accuracy.mean for r in rows if r.reference == "joint"), math.nan)
    if hib and math.isfinite(joint) and joint > 0:
        for row in rows:
            row.of_joint = row.average_accuracy.mean / joint
    return rows


def pareto_optimal(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which ``(x, y)`` points are Pareto-optimal: ``x`` higher is better, ``y`` lower is better.

    ``x`` is plasticity (the new-task score), ``y`` a forgetting cost. The cost used in reports is
    the mean capability degradation when every variant has one, else the mean average forgetting
    (:func:`forgetting_cost_key`). A point is optimal iff no other point dominates it, i.e. has
    ``x' >= x`` and ``y' <= y`` with at least one strict. Identical points do not dominate each
    other (both stay optimal); a point with a ``NaN`` coordinate is never optimal and dominates
    nothing.

    Worked example: ``a`` = (0.9, 0.3), ``b`` = (0.8, 0.1), ``c`` = (0.7, 0.2), ``d`` = (0.9, 0.4).
    ``c`` is dominated by ``b`` (higher x, lower y), ``d`` by ``a`` (equal x, lower y); ``a``
    and ``b`` trade plasticity against forgetting, so both are on the front.

    >>> pareto_optimal([(0.9, 0.3), (0.8, 0.1), (0.7, 0.2), (0.9, 0.4)])
    [True, True, False, False]
    >>> pareto_optimal([(0.5, 0.5), (0.5, 0.5)])  # duplicates: neither strictly better
    [True, True]
    """
    pts = [(float(x), float(y)) for x, y in points]
    valid = [not (math.isnan(x) or math.isnan(y)) for x, y in pts]
    result = []
    for i, (x, y) in enumerate(pts):
        if not valid[i]:
            result.append(False)
            continue
        dominated = any(
            valid[j] and ox >= x and oy <= y and (ox > x or oy < y)
            for j, (ox, oy) in enumerate(pts)
            if j != i
        )
        result.append(not dominated)
    return result
