"""Figures of a run's optional diagnostics: gradient interference during training, and the
representational and output shift of the final model from the starting one.

A run's ``results.json`` (format ``retain.run/1``) may hold ``interference`` (records of an
:class:`~retain.diagnostics.interference.InterferenceTracker`: the cosine between a training
step's gradient and the prior capability's) and ``shift`` (``representation``: CKA per layer,
``output``: next-token KL, as in ``retain diagnose``). Both are absent or None in older runs,
which then get none of these figures. Registered in :func:`retain.report.plots.run_figures`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from retain.report.diagnose_plots import output_kl_figure, representation_figure
from retain.report.figure_parts import floats, fmt, new_figure, steps_axis, task_offsets

__all__ = [
    "RUN_DIAGNOSTIC_FIGURES",
    "interference_run_figure",
    "interference_steps",
    "run_diagnostic_figures",
]

Results = dict[str, Any]
#: The figures of the optional ``interference`` and ``shift`` sections of a run, in report order.
RUN_DIAGNOSTIC_FIGURES = ("interference", "representation", "output_kl")


def interference_steps(results: Results) -> list[float]:
    """Global step of each interference record: ``offset of its task + step`` (the x of every
    other step plot, :func:`~retain.report.plots.task_offsets`), its ``global_step`` when its task
    is not in the run's task list."""
    records = list((results.get("interference") or {}).get("records") or [])
    tasks = [str(t) for t in (results.get("run") or {}).get("tasks") or []]
    offsets = task_offsets(results, len(tasks))
    steps, current = [], 0
    for record in records:
        name = str(record.get("task", ""))
        # Records are in training order: the task is the current one or a later one.
        later = [t for t in range(current, len(tasks)) if tasks[t] == name]
        if later and record.get("step") is not None:
            current = later[0]
            steps.append(offsets[current] + float(record["step"]))
        else:
            steps.append(float(record.get("global_step") or np.nan))
    return steps


def interference_run_figure(results: Results) -> Figure | None:
    """Overall gradient cosine of each measured step with the prior capability over global steps
    (points, negative = conflicting in red), its moving average, a zero line and the task
    boundaries; the conflicting fraction and mean cosine in the title."""
    interference = results.get("interference") or {}
    records = list(interference.get("records") or [])
    if not records:
        return None
    x, y = np.array(interference_steps(results)), floats([r.get("cosine") for r in records])
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
    ax.set_ylabel(f"cosine(step gradient, {interference.get('prior', 'prior')} gradient)")
    summary = interference.get("summary") or {}
    values = y[np.isfinite(y)]
    conflicting = summary.get("conflicting")
    if conflicting is None and values.size:
        conflicting = float((values < 0).mean())
    title = (
        f"Gradient interference during training: {fmt(conflicting, '.0%')} of "
        f"{values.size} measured steps conflict (cosine < 0), mean cosine "
        f"{fmt(summary.get('mean_cosine'), '+.3f')}"
    )
    run = results.get("run") or {}
    offsets = task_offsets(results, len(run.get("tasks") or []))
    last = sum(float(log.get("steps") or 0) for log in run.get("logs") or [])
    if last > 0 and np.nanmax(x, initial=0.0) <= last:  # the whole run, like the loss plot
        ax.set_xlim(0.0, last + 0.5)
    steps_axis(ax, results, offsets, title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def run_diagnostic_figures(results: Results) -> dict[str, Figure]:
    """The figures of :data:`RUN_DIAGNOSTIC_FIGURES` the run has data for."""
    shift = results.get("shift") or {}
    start = "start of the run vs final model"
    figures = {
        "interference": interference_run_figure(results),
        "representation": representation_figure(
            shift, title=f"Representational similarity per layer ({start}, linear CKA)"
        ),
        "output_kl": output_kl_figure(shift, title=f"Next-token KL per position ({start})"),
    }
    return {n: fig for n in RUN_DIAGNOSTIC_FIGURES if (fig := figures[n]) is not None}
