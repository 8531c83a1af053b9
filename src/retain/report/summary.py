"""Summary figures of run results and their aggregation over seeds, with the Pareto front.

Input is a run directory's ``results.json`` dictionary (format ``retain.run/1``). All functions are
pure: they read dictionaries and return new ones. Undefined figures (``NaN``, ``null``, a run
without a capability suite) are ``None``, never ``NaN``, so the output is strict JSON.

Figures of one run (:func:`run_summary`), for scores ``R[t][i]`` (task ``i`` after training task
``t``, ``T`` tasks):

* ``new_task_score`` (plasticity): ``mean_t R[t][t]``, each task's score right after training it;
* ``average_accuracy``: ``mean_i R[T-1][i]``;
* ``backward_transfer``: ``mean_{i<T-1} (R[T-1][i] - R[i][i])`` (negative = forgot);
* ``forgetting``: Chaudhry et al.'s ``mean_{i<T-1} (max_{t<T-1} R[t][i] - R[T-1][i])``;
* ``capability_degradation``: the worst relative degradation (positive = worse, 0.05 = 5 %) over
  the suite's capabilities after the last task;
* ``seconds``: wall-clock seconds of the whole run.

Transfer and forgetting follow the score's direction (``results["score"]["higher_is_better"]``),
so positive forgetting always means *got worse*; see :mod:`retain.metrics`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from retain.errors import RetainError
from retain.metrics import average_accuracy, average_forgetting, backward_transfer

__all__ = [
    "SUMMARY_KEYS",
    "aggregate",
    "forgetting_cost_key",
    "higher_is_better",
    "pareto_optimal",
    "run_summary",
]

#: The figures of :func:`run_summary`, in display order.
SUMMARY_KEYS = (
    "new_task_score",
    "average_accuracy",
    "backward_transfer",
    "forgetting",
    "capability_degradation",
    "seconds",
)


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (None, NaN, infinities, non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _matrix(run: dict[str, Any]) -> list[list[float]]:
    rows = run.get("matrix") or []
    if not rows:
        raise RetainError("results have an empty score matrix run.matrix; re-run the experiment")
    return [[math.nan if _number(v) is None else float(v) for v in row] for row in rows]


def higher_is_better(results: dict[str, Any]) -> bool:
    """The score's direction, ``results["score"]["higher_is_better"]`` (True when absent)."""
    score = results.get("score") or {}
    return bool(score.get("higher_is_better", True))


def run_summary(results: dict[str, Any]) -> dict[str, float | None]:
    """The summary figures of one run (see the module docstring), ``None`` where undefined.

    >>> results = {"score": {"name": "accuracy", "higher_is_better": True}, "seconds": 12.5,
    ...            "run": {"matrix": [[0.9, 0.1], [0.6, 0.8]], "suite": {}}}
    >>> s = run_summary(results)
    >>> round(s["new_task_score"], 6), round(s["average_accuracy"], 6)  # (0.9+0.8)/2, (0.6+0.8)/2
    (0.85, 0.7)
    >>> round(s["backward_transfer"], 6), round(s["forgetting"], 6)  # 0.6 - 0.9, 0.9 - 0.6
    (-0.3, 0.3)
    >>> s["capability_degradation"] is None  # no suite
    True
    """
    run = results.get("run") or {}
    matrix = _matrix(run)
    hib = higher_is_better(results)
    diagonal = [row[t] for t, row in enumerate(matrix) if t < len(row) and not math.isnan(row[t])]
    suite = run.get("suite") or {}
    worst: float | None = None
    relative = suite.get("relative_degradation") or []
    if relative:
        values = [v for v in map(_number, relative[-1].values()) if v is not None]
        worst = max(values) if values else None
    return {
        "new_task_score": sum(diagonal) / len(diagonal) if diagonal else None,
        "average_accuracy": _number(average_accuracy(matrix)),
        "backward_transfer": _number(backward_transfer(matrix, higher_is_better=hib)),
        "forgetting": _number(average_forgetting(matrix, higher_is_better=hib)),
        "capability_degradation": worst,
        "seconds": _number(results.get("seconds")),
    }


def _mean_sd(values: Sequence[float | None]) -> dict[str, float | None]:
    kept = [v for v in values if v is not None]
    if not kept:
        return {"mean": None, "sd": None}
    sd = statistics.stdev(kept) if len(kept) > 1 else 0.0
    return {"mean": statistics.fmean(kept), "sd": sd}


def forgetting_cost_key(rows: Sequence[dict[str, Any]]) -> str:
    """The figure used as forgetting cost on the Pareto front (lower is better).

    ``"capability_degradation"`` (worst relative degradation of the suite after the last task)
    when every row has its mean, else ``"forgetting"`` (average forgetting of the tasks).

    >>> forgetting_cost_key([{"capability_degradation": {"mean": 0.1, "sd": 0.0}}])
    'capability_degradation'
    >>> forgetting_cost_key([{"capability_degradation": {"mean": None, "sd": None}}])
    'forgetting'
    """
    has_all = bool(rows) and all(
        (row.get("capability_degradation") or {}).get("mean") is not None for row in rows
    )
    return "capability_degradation" if has_all else "forgetting"


def aggregate(results_list: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant (first-seen order) with mean and sample sd of every summary figure.

    Row: ``{"variant", "strategies", "seeds": [...], "n", <figure>: {"mean", "sd"} for each of
    :data:`SUMMARY_KEYS`, "pareto": bool}``. ``sd`` is the sample standard deviation (``n - 1``
    in the denominator), 0.0 for a single run; runs where a figure is ``None`` are skipped for
    that figure, and a figure that is ``None`` in every run has ``{"mean": None, "sd": None}``.
    ``strategies`` is the first run's. ``pareto`` marks the variants on the Pareto front of
    (``new_task_score`` mean, forgetting cost mean) (:func:`pareto_optimal`,
    :func:`forgetting_cost_key`); for a lower-is-better score the new-task score is negated first.
    Runs scored with different metrics cannot be compared: :class:`RetainError`.

    >>> def res(variant, seed, diag):
    ...     return {"variant": variant, "seed": seed, "seconds": 1.0,
    ...             "run": {"matrix": [[diag, 0.0], [0.5, diag]], "strategies": variant}}
    >>> rows = aggregate([res("a", 0, 0.8), res("a", 1, 0.6), res("b", 0, 0.9)])
    >>> [(r["variant"], r["seeds"], r["n"]) for r in rows]
    [('a', [0, 1], 2), ('b', [0], 1)]
    >>> round(rows[0]["new_task_score"]["mean"], 6), round(rows[0]["new_task_score"]["sd"], 6)
    (0.7, 0.141421)
    >>> [r["pareto"] for r in rows]  # b: higher new-task score (0.9) but more forgetting (0.4)
    [True, True]
    """
    if not results_list:
        raise RetainError("nothing to aggregate: pass at least one run's results")
    scores = {
        (str((r.get("score") or {}).get("name", "score")), higher_is_better(r))
        for r in results_list
    }
    if len(scores) > 1:
        raise RetainError(
            f"runs are scored with different metrics {sorted(scores)}; compare runs of one score"
        )
    hib = next(iter(scores))[1]
    groups: dict[str, list[dict[str, Any]]] = {}
    for results in results_list:
        groups.setdefault(str(results.get("variant", "naive")), []).append(results)
    rows: list[dict[str, Any]] = []
    for variant, runs in groups.items():
        summaries = [run_summary(r) for r in runs]
        row: dict[str, Any] = {
            "variant": variant,
            "strategies": str((runs[0].get("run") or {}).get("strategies", "")),
            "seeds": [r.get("seed") for r in runs],
            "n": len(runs),
        }
        for key in SUMMARY_KEYS:
            row[key] = _mean_sd([s[key] for s in summaries])
        rows.append(row)
    cost = forgetting_cost_key(rows)
    sign = 1.0 if hib else -1.0
    points = [
        (
            math.nan if r["new_task_score"]["mean"] is None else sign * r["new_task_score"]["mean"],
            math.nan if r[cost]["mean"] is None else r[cost]["mean"],
        )
        for r in rows
    ]
    for row, optimal in zip(rows, pareto_optimal(points), strict=True):
        row["pareto"] = optimal
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
