"""Figures comparing variants: the plasticity/forgetting Pareto plot and transfer bars.

Input is the rows of :func:`retain.report.summary.aggregate` (one per variant, mean and sample sd
of every summary figure over its seeds). Figures are free-standing
:class:`~matplotlib.figure.Figure` objects (no pyplot), None when the data is absent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from retain.records.comparison import ComparisonRow
from retain.report.figure_parts import new_figure, short
from retain.report.summary import forgetting_cost_key

__all__ = ["COMPARISON_FIGURES", "comparison_figures", "pareto_figure", "transfer_figure"]

#: The names of :func:`comparison_figures`, in report order.
COMPARISON_FIGURES = ("pareto", "transfer")

_COST_LABEL = {
    "capability_degradation": "worst capability degradation after the last task",
    "forgetting": "average forgetting of the tasks",
}


def _stat(row: ComparisonRow, key: str, part: str) -> float:
    figure = row.figure(key)
    return figure.mean if part == "mean" else figure.sd


def pareto_figure(
    rows: Sequence[ComparisonRow], score_name: str = "score", higher_is_better: bool = True
) -> Figure | None:
    """New-task score (x) against forgetting cost (y) per variant, error bars = sample sd.

    The cost is :func:`~retain.report.summary.forgetting_cost_key`'s (capability degradation
    when every variant has it, else average forgetting). Pareto-optimal variants (``row.pareto``)
    are red stars joined by the front line; the others grey circles. Every variant is labelled.
    The reference baselines (no forgetting cost: nothing came after them) are vertical lines at
    their new-task score: ``joint`` (every task after training on all at once, the upper bound)
    and ``single`` (each task trained alone).
    """
    references = [r for r in rows if r.reference is not None]
    rows = [r for r in rows if r.reference is None]
    cost = forgetting_cost_key(rows)
    x = np.array([_stat(r, "new_task_score", "mean") for r in rows])
    y = np.array([_stat(r, cost, "mean") for r in rows])
    shown = np.isfinite(x) & np.isfinite(y)
    if not shown.any():
        return None
    xerr = np.nan_to_num([_stat(r, "new_task_score", "sd") for r in rows])
    yerr = np.nan_to_num([_stat(r, cost, "sd") for r in rows])
    fig = new_figure(8.0, 5.5)
    ax = fig.add_subplot()
    front = [k for k, r in enumerate(rows) if shown[k] and r.pareto]
    for k, row in enumerate(rows):
        if not shown[k]:
            continue
        optimal = k in front
        ax.errorbar(
            x[k],
            y[k],
            xerr=xerr[k],
            yerr=yerr[k],
            fmt="*" if optimal else "o",
            markersize=13 if optimal else 7,
            color="tab:red" if optimal else "0.45",
            ecolor="0.6",
            capsize=3,
        )
        label = short(row.variant, 24) + (" (Pareto)" if optimal else "")
        ax.annotate(label, (x[k], y[k]), xytext=(6, 6), textcoords="offset points", fontsize=8)
    if len(front) > 1:
        order = sorted(front, key=lambda k: x[k])
        ax.plot(x[order], y[order], color="tab:red", linewidth=1.2, linestyle="-", zorder=0)
    styles = {"joint": ("tab:green", "--"), "single": ("tab:blue", ":")}
    for k, row in enumerate(references):
        where = row.new_task_score.mean
        if np.isfinite(where):
            color, style = styles[row.reference or "joint"]
            ax.axvline(where, color=color, linestyle=style, linewidth=1.2, zorder=0)
            ax.annotate(
                f"{row.variant} (reference)",
                (where, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12 - 12 * k),  # one line each: close references stay readable
                textcoords="offset points",
                fontsize=8,
                color=color,
            )
    better = "higher" if higher_is_better else "lower"
    ax.set_xlabel(f"new-task score ({score_name}, mean of R[t][t]; {better} is better)")
    ax.set_ylabel(f"{_COST_LABEL[cost]} (lower is better)")
    if cost == "capability_degradation":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title("Plasticity vs forgetting: the Pareto front (red) of the variants")
    ax.grid(alpha=0.3)
    ax.margins(0.15)
    return fig


def transfer_figure(rows: Sequence[ComparisonRow]) -> Figure | None:
    """Backward transfer and average forgetting per variant: bars of the mean, error bars = sd."""
    keys = ("backward_transfer", "forgetting")
    means = np.array([[_stat(r, k, "mean") for k in keys] for r in rows])
    if not np.isfinite(means).any():
        return None
    sds = np.nan_to_num([[_stat(r, k, "sd") for k in keys] for r in rows])
    fig = new_figure(max(7.5, 0.9 * len(rows) + 3.0), 4.5)
    ax = fig.add_subplot()
    positions = np.arange(len(rows))
    width = 0.38
    for j, (key, color) in enumerate(zip(keys, ("tab:blue", "tab:orange"), strict=True)):
        ax.bar(
            positions + (j - 0.5) * width,
            np.nan_to_num(means[:, j]),
            width,
            yerr=sds[:, j],
            capsize=3,
            color=color,
            label="backward transfer (BWT)" if key == "backward_transfer" else "forgetting",
        )
    ax.axhline(0.0, color="black", linewidth=0.8)
    names = [short(r.variant, 20) for r in rows]
    ax.set_xticks(positions, labels=names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("score change (BWT < 0 or forgetting > 0: forgot;\nthe other sign: improved)")
    ax.set_title("Backward transfer and forgetting per variant (mean ± sd)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return fig


def comparison_figures(
    rows: Sequence[ComparisonRow], score_name: str = "score", higher_is_better: bool = True
) -> dict[str, Figure]:
    """Every comparison figure with data, by name in :data:`COMPARISON_FIGURES` order."""
    figures = {
        "pareto": pareto_figure(rows, score_name, higher_is_better),
        "transfer": transfer_figure(rows),
    }
    return {name: fig for name, fig in figures.items() if fig is not None}
