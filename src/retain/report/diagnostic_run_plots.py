"""Figures of a run's optional diagnostics: gradient interference during training, and the
representational and output shift of the final model from the starting one.

A run's :class:`~retain.records.run.RunRecord` (``results.json``, format ``retain.run/1``) may
hold ``interference`` (records of an
:class:`~retain.diagnostics.interference.InterferenceTracker`: the cosine between a training
step's gradient and the prior capability's) and ``shift`` (``representation``: CKA per layer,
``output``: next-token KL, as in ``retain diagnose``). Both are None in runs that did not measure
them (and in older runs), which then get none of these figures. Registered in
:func:`retain.report.plots.run_figures`.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from retain.records.run import RunRecord
from retain.report.diagnose_plots import output_kl_figure, representation_figure
from retain.report.figure_parts import floats, fmt, new_figure, steps_axis, task_offsets

__all__ = [
    "RUN_DIAGNOSTIC_FIGURES",
    "interference_run_figure",
    "interference_steps",
    "run_diagnostic_figures",
]

#: The figures of the optional ``interference`` and ``shift`` sections of a run, in report order.
RUN_DIAGNOSTIC_FIGURES = ("interference", "representation", "output_kl")


def interference_steps(record: RunRecord) -> list[float]:
    """Global step of each interference record: ``offset of its task + step`` (the x of every
    other step plot, :func:`~retain.report.figure_parts.task_offsets`), its ``global_step`` when
    its task is not in the run's task list; empty without ``interference``."""
    if record.interference is None:
        return []
    tasks = record.run.tasks
    offsets = task_offsets(record, len(tasks))
    steps: list[float] = []
    current = 0
    for measured in record.interference.records:
        # Records are in training order: the task is the current one or a later one.
        later = [t for t in range(current, len(tasks)) if tasks[t] == measured.task]
        if later:
            current = later[0]
            steps.append(offsets[current] + float(measured.step))
        else:
            steps.append(float(measured.global_step))
    return steps


def interference_run_figure(record: RunRecord) -> Figure | None:
    """Overall gradient cosine of each measured step with the prior capability over global steps
    (points, negative = conflicting in red), its moving average, a zero line and the task
    boundaries; the conflicting fraction and mean cosine in the title."""
    interference = record.interference
    if interference is None or not interference.records:
        return None
    x = np.array(interference_steps(record))
    y = floats([measured.cosine for measured in interference.records])
    fig = new_figure(11.0, 4.2)
    ax = fig.add_subplot()
    colors = ["tab:red" if v < 0 else "tab:blue" for v in np.nan_to_num(y)]
    ax.scatter(x, y, s=14, c=colors, zorder=3, label="measured step (red: conflicting)")
    finite = np.isfinite(x) & np.isfinite(y)
    window = max(1, min(10, int(finite.sum()) // 4))
    if window > 1:
        smooth = np.convolve(y[finite], np.ones(window) / window, "valid")
        label = f"mean of {window} measurements"
        ax.plot(x[finite][window - 1 :], smooth, color="black", linewidth=1.5, label=label)
    ax.axhline(0.0, color="0.3", linewidth=0.9)
    low = float(np.nanmin(y)) if np.isfinite(y).any() else 0.0
    high = float(np.nanmax(y)) if np.isfinite(y).any() else 0.0
    ax.set_ylim(min(low, 0.0) - 0.05, max(high, 0.0) + 0.05)
    ax.set_ylabel(f"cosine(step gradient, {interference.prior} gradient)")
    summary = interference.summary
    values = y[np.isfinite(y)]
    conflicting = summary.conflicting
    if not math.isfinite(conflicting) and values.size:
        conflicting = float((values < 0).mean())
    title = (
        f"Gradient interference during training: {fmt(conflicting, '.0%')} of "
        f"{values.size} measured steps conflict (cosine < 0), mean cosine "
        f"{fmt(summary.mean_cosine, '+.3f')}"
    )
    offsets = task_offsets(record, len(record.run.tasks))
    last = sum(float(log.steps) for log in record.run.logs)
    if last > 0 and np.nanmax(x, initial=0.0) <= last:  # the whole run, like the loss plot
        ax.set_xlim(0.0, last + 0.5)
    steps_axis(ax, record, offsets, title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def run_diagnostic_figures(record: RunRecord) -> dict[str, Figure]:
    """The figures of :data:`RUN_DIAGNOSTIC_FIGURES` the run has data for."""
    shift = record.shift
    start = "start of the run vs final model"
    figures = {
        "interference": interference_run_figure(record),
        "representation": representation_figure(
            None if shift is None else shift.representation,
            title=f"Representational similarity per layer ({start}, linear CKA)",
        ),
        "output_kl": output_kl_figure(
            None if shift is None else shift.output,
            title=f"Next-token KL per position ({start})",
        ),
    }
    return {n: fig for n in RUN_DIAGNOSTIC_FIGURES if (fig := figures[n]) is not None}
