"""Figures of one run's ``results.json``: score matrix, task curves, degradation, loss, strategies.

Every function takes the run's :class:`~retain.records.run.RunRecord` (format ``retain.run/1``)
and returns a :class:`matplotlib.figure.Figure`, or None when the run has no data for it (its
section is None or empty). Figures are built with :class:`~matplotlib.figure.Figure` directly,
never through ``pyplot``: no global state, so they work headless and in threads, and they are
freed when dropped (``fig.savefig`` renders PNG with Agg).

Steps: monitor, budget and unfreezing records count optimizer steps from 0 at each task's start;
plots over the whole sequence shift task ``t`` by the steps of the tasks before it
(``sum_{s<t} run.logs[s].steps``, the *global step*) and draw the task boundaries as dashed lines.
Relative degradation is ``(before - after) / |before|`` with positive = worse, shown in percent.
Undefined numbers are ``NaN`` and drawn as gaps.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from numpy.typing import NDArray

from retain.records.run import RunRecord
from retain.report.diagnostic_run_plots import RUN_DIAGNOSTIC_FIGURES, run_diagnostic_figures
from retain.report.figure_parts import (
    color_map,
    floats,
    fmt,
    heatmap,
    legend,
    new_figure,
    short,
    steps_axis,
    task_offsets,
)
from retain.report.summary import run_summary

__all__ = [
    "RUN_DIAGNOSTIC_FIGURES",
    "RUN_FIGURES",
    "budget_figure",
    "degradation_figure",
    "drift_figure",
    "layer_lr_figure",
    "loss_figure",
    "run_figures",
    "score_matrix_figure",
    "task_curves_figure",
    "unfreezing_figure",
]

#: The names of :func:`run_figures` from the training records, in report order.
RUN_FIGURES = (
    "score_matrix",
    "task_curves",
    "degradation",
    "loss",
    "budget",
    "drift",
    "layer_lrs",
    "unfreezing",
)
# Artist styles.
_RING: dict[str, Any] = {"marker": "o", "markersize": 10, "markerfacecolor": "none"}
_WORST: dict[str, Any] = {"color": "black", "linewidth": 2, "marker": ".", "zorder": 3}
_THIN: dict[str, Any] = {"linewidth": 0.9, "alpha": 0.8}
_STOP: dict[str, Any] = {"marker": "X", "s": 80, "color": "red", "zorder": 5}
_STOP_NUMBER: dict[str, Any] = {"xytext": (5, 5), "textcoords": "offset points", "fontsize": 8}


def _after(tasks: Sequence[str], count: int) -> list[str]:
    """Tick labels ``after <task>`` for ``count`` stages."""
    return [f"after {short(tasks[t], 16)}" if t < len(tasks) else str(t + 1) for t in range(count)]


def score_matrix_figure(record: RunRecord) -> Figure | None:
    """Heatmap of ``R[t][i]`` (rows: after training task t; columns: task i), cells annotated."""
    tasks, rows = record.run.tasks, record.run.matrix
    if not tasks or not rows:
        return None
    data = np.full((len(rows), len(tasks)), np.nan)
    for t, row in enumerate(rows):
        data[t, : min(len(row), len(tasks))] = floats(row)[: len(tasks)]
    side = min(3.0 + 0.7 * len(tasks), 14.0)
    fig = new_figure(side + 1.8, side)
    ax = fig.add_subplot()
    heatmap(fig, ax, data, "viridis", record.score.name, ".3g", len(tasks) <= 16)
    labels = [short(t, 20) for t in tasks]
    ax.set_xticks(range(len(tasks)), labels=labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=labels[: len(rows)], fontsize=8)
    ax.set_xlabel("evaluated on task i")
    ax.set_ylabel("after training task t")
    summary = run_summary(record)
    bwt, forgetting = fmt(summary.backward_transfer, "+.3f"), fmt(summary.forgetting, ".3f")
    title = f"Score matrix R[t][i] ({record.score.name})\nBWT {bwt}, forgetting {forgetting}"
    ax.set_title(title, fontsize=10)
    return fig


def task_curves_figure(record: RunRecord) -> Figure | None:
    """Each task's score after each training stage (stage 0 = the baseline before training)."""
    tasks, rows, baseline = record.run.tasks, record.run.matrix, record.run.baseline
    if not tasks or not rows:
        return None
    stages = np.arange(len(rows) + 1)
    fig = new_figure(max(6.0, 1.2 * len(stages) + 3.0), 4.2)
    ax = fig.add_subplot()
    for i, task in enumerate(tasks):
        start = baseline[i] if i < len(baseline) else math.nan
        values = floats([start] + [row[i] if i < len(row) else math.nan for row in rows])
        (line,) = ax.plot(stages, values, marker="o", markersize=4, label=short(task))
        if i + 1 < len(stages):  # ring: the stage where task i itself was trained
            ax.plot(stages[i + 1], values[i + 1], color=line.get_color(), **_RING)
    labels = ["start", *_after(tasks, len(rows))]
    ax.set_xticks(stages, labels=labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(record.score.name)
    ax.set_title("Score of each task after each training stage (ring: the task just trained)")
    ax.grid(alpha=0.3)
    legend(ax)
    return fig


def _budget_line(ax: Axes, budget: float | None) -> None:
    if budget is not None:
        ax.axhline(float(budget), color="red", linestyle="--", label=f"budget {budget:.1%}")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))


def _table(rows: Sequence[dict[str, float]], names: Sequence[str]) -> NDArray[np.float64]:
    """``rows`` (capability scores) as a ``len(rows) x len(names)`` array, ``NaN`` where a row
    lacks a name."""
    blank = dict.fromkeys(names, math.nan)
    table = [[padded[n] for n in names] for padded in (blank | row for row in rows)]
    return np.array(table, dtype=np.float64).reshape(len(rows), len(names))


def _monitor_budget(record: RunRecord) -> float | None:
    """The forgetting monitor's budget ``monitor.max_degradation`` (None without a monitor)."""
    return None if record.monitor is None else record.monitor.max_degradation


def degradation_figure(record: RunRecord) -> Figure | None:
    """Capability degradation over global steps from the monitor (or per task from the suite).

    Monitor: worst degradation (black) and each capability (thin), the budget
    ``monitor.max_degradation`` (red dashed), stop points (numbered x; the reasons in the
    legend). Without monitor histories but with a suite: the suite's relative degradation after
    each task.
    """
    logs = record.run.logs
    monitors = [(t, log.monitor) for t, log in enumerate(logs) if log.monitor is not None]
    histories = [(t, m) for t, m in monitors if m.history]
    if not histories:
        return _suite_degradation_figure(record)
    offsets = task_offsets(record, max(len(logs), len(record.run.tasks)))
    evals = [h for _, m in histories for h in m.history]
    names = list(dict.fromkeys(n for h in evals for n in h.degradation))
    colors = color_map(names)
    fig = new_figure(11.0, 5.0)
    ax = fig.add_subplot()
    stops, labelled = 0, set()
    for k, (t, monitor) in enumerate(histories):
        history = monitor.history
        steps = offsets[t] + floats([h.step for h in history])
        worst = floats([h.worst_degradation for h in history])
        ax.plot(steps, worst, label=None if k else "worst capability", **_WORST)
        table = _table([h.degradation for h in history], names)
        for j, name in enumerate(names):
            values = table[:, j]
            label = None if name in labelled else short(name)
            ax.plot(steps, values, color=colors[name], label=label, **_THIN)
            labelled.add(name)
        if monitor.stopped:
            stops += 1
            reason = textwrap.fill(f"stop {stops}: {monitor.reason}", 44)
            ax.scatter(steps[-1:], worst[-1:], label=reason, **_STOP)
            ax.annotate(str(stops), (steps[-1], worst[-1]), color="darkred", **_STOP_NUMBER)
    _budget_line(ax, _monitor_budget(record))
    ax.set_ylabel("relative degradation (positive = worse)")
    steps_axis(ax, record, offsets, "Capability degradation during training (monitor)")
    legend(ax)
    return fig


def _suite_degradation_figure(record: RunRecord) -> Figure | None:
    suite = record.run.suite
    if suite is None or not suite.relative_degradation:
        return None
    relative = suite.relative_degradation
    names = list(dict.fromkeys(n for row in relative for n in row))
    colors = color_map(names)
    x = np.arange(1, len(relative) + 1)
    fig = new_figure(max(6.0, 1.2 * len(x) + 3.0), 4.2)
    ax = fig.add_subplot()
    table = _table(relative, names)
    worst = [float(np.nanmax(r)) if np.isfinite(r).any() else math.nan for r in table]
    ax.plot(x, worst, label="worst capability", **_WORST)
    for k, name in enumerate(names):
        ax.plot(x, table[:, k], color=colors[name], marker=".", label=short(name), **_THIN)
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    _budget_line(ax, _monitor_budget(record))
    ax.set_xticks(x, labels=_after(record.run.tasks, len(x)), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("relative degradation (positive = worse)")
    ax.set_title("Capability degradation after each task (suite, against the start)")
    ax.grid(alpha=0.3)
    legend(ax)
    return fig


def loss_figure(record: RunRecord) -> Figure | None:
    """Training loss per optimizer step over the whole sequence, with a moving average."""
    logs = record.run.logs
    offsets = task_offsets(record, len(logs))
    xs: list[float] = []
    ys: list[float] = []
    for t, log in enumerate(logs):
        xs.extend(offsets[t] + k + 1 for k in range(len(log.losses)))
        ys.extend(float(v) for v in log.losses)
    if not ys:
        return None
    fig = new_figure(11.0, 4.0)
    ax = fig.add_subplot()
    loss, window = np.array(ys), max(1, len(ys) // 50)
    faint: dict[str, Any] = {"linewidth": 0.7, "alpha": 0.45} if window > 1 else {"linewidth": 1.2}
    ax.plot(xs, loss, color="tab:blue", label="per step", **faint)
    if window > 1:
        filled = np.nan_to_num(loss, nan=float(np.nanmean(loss)))
        smooth = np.convolve(filled, np.ones(window) / window, "valid")
        label = f"mean of {window} steps"
        ax.plot(xs[window - 1 :], smooth, color="tab:blue", linewidth=1.8, label=label)
    ax.set_ylabel("training loss")
    steps_axis(ax, record, offsets, "Training loss")
    legend(ax)
    return fig


def budget_figure(record: RunRecord) -> Figure | None:
    """The forgetting budget's strength (top, log scale) and worst degradation (bottom)."""
    budget = record.budget
    if budget is None or not any(budget.history):
        return None
    history = budget.history
    offsets = task_offsets(record, len(history))
    fig = new_figure(11.0, 5.5)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for t, evals in enumerate(history):
        steps = offsets[t] + floats([e.step for e in evals])
        top.plot(steps, floats([e.strength for e in evals]), ".-", color="tab:purple")
        bottom.plot(steps, floats([e.degradation for e in evals]), ".-", color="black")
    strengths = np.concatenate([floats([e.strength for e in h]) for h in history])
    if np.isfinite(strengths).any() and np.nanmin(strengths) > 0:
        top.set_yscale("log")
    _budget_line(bottom, budget.max_degradation)
    top.set_ylabel("penalty strength")
    bottom.set_ylabel("worst relative degradation")
    steps_axis(top, record, offsets, "Forgetting budget controller")
    steps_axis(bottom, record, offsets, "", names=False)
    top.set_xlabel("")
    if bottom.get_legend_handles_labels()[0]:
        bottom.legend(fontsize=7, loc="upper left")
    return fig


def drift_figure(record: RunRecord) -> Figure | None:
    """Relative drift ``||θ_t − θ_0||₂ / ||θ_0||₂`` of each layer (rows) after each task."""
    drift = record.drift
    if drift is None or not drift.layers or not drift.after:
        return None
    layers, after = drift.layers, drift.after
    data = np.full((len(layers), len(after)), np.nan)
    for t, row in enumerate(after):
        data[: min(len(row), len(layers)), t] = floats(row)[: len(layers)]
    height = max(3.0, 0.26 * len(layers) + 1.6)
    fig = new_figure(max(5.5, 1.1 * len(after) + 4.5), height)
    ax = fig.add_subplot()
    heatmap(fig, ax, data, "magma", "relative drift", ".2g", data.size <= 160)
    size = 8 if len(layers) <= 15 else 6.5
    ax.set_yticks(range(len(layers)), labels=[short(x, 36) for x in layers], fontsize=size)
    labels = _after(record.run.tasks, len(after))
    ax.set_xticks(range(len(after)), labels=labels, rotation=20, ha="right", fontsize=8)
    ax.set_title("Per-layer relative drift from the start")
    return fig


def layer_lr_figure(record: RunRecord) -> Figure | None:
    """Learning rate of each parameter group (layer-wise learning rates), horizontal bars."""
    groups = record.layer_lrs
    if not groups:
        return None
    lrs = floats([g.lr for g in groups])
    fig = new_figure(8.0, max(2.5, 0.26 * len(groups) + 1.4))
    ax = fig.add_subplot()
    ax.barh(range(len(groups)), lrs, color="tab:green")
    names = [short(g.group, 36) for g in groups]
    ax.set_yticks(range(len(groups)), labels=names, fontsize=8 if len(groups) <= 15 else 6.5)
    ax.invert_yaxis()
    positive = lrs[np.isfinite(lrs) & (lrs > 0)]
    if positive.size and positive.max() / positive.min() > 20:
        ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_title("Layer-wise learning rates (first group at the top)")
    ax.grid(alpha=0.3, axis="x")
    return fig


def unfreezing_figure(record: RunRecord) -> Figure | None:
    """Trainable blocks over global steps (gradual unfreezing), one step line per task."""
    timeline = record.unfreezing
    if timeline is None or not any(timeline):
        return None
    offsets, tasks = task_offsets(record, len(timeline)), record.run.tasks
    fig = new_figure(11.0, 4.0)
    ax = fig.add_subplot()
    for t, points in enumerate(timeline):
        if points:
            steps = offsets[t] + floats([p[0] for p in points])
            label = short(tasks[t]) if t < len(tasks) else f"task {t + 1}"
            blocks = floats([p[1] for p in points])
            ax.step(steps, blocks, where="post", marker="o", markersize=3, label=label)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("trainable blocks")
    steps_axis(ax, record, offsets, "Gradual unfreezing")
    legend(ax)
    return fig


def run_figures(record: RunRecord) -> dict[str, Figure]:
    """Every figure the run has data for, by name: :data:`RUN_FIGURES`, then
    :data:`RUN_DIAGNOSTIC_FIGURES` (when the record has ``interference`` or ``shift``)."""
    builders = {
        "score_matrix": score_matrix_figure,
        "task_curves": task_curves_figure,
        "degradation": degradation_figure,
        "loss": loss_figure,
        "budget": budget_figure,
        "drift": drift_figure,
        "layer_lrs": layer_lr_figure,
        "unfreezing": unfreezing_figure,
    }
    figures = {name: builders[name](record) for name in RUN_FIGURES}
    figures.update(run_diagnostic_figures(record))
    return {name: fig for name, fig in figures.items() if fig is not None}
