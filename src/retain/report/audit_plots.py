"""The figure of an audit: a forest plot of every capability's change and its paired interval.

Input is the audit's :class:`~retain.records.audit.AuditRecord` (``results.json`` of ``retain
audit``). One row per capability, in the suite's order from the top: the relative degradation
(fraction of the starting score, drawn in percent; positive = worse, whatever the metric's
direction) as a dot coloured by the capability's verdict, its 95 % paired bootstrap interval as a
horizontal error bar, a solid line at 0 (no change) and a dashed one at the audit's tolerance. A
capability WORSE has its whole interval right of the dashed line, WITHIN left of it, UNCLEAR
across it. A relative degradation that is undefined (starting score 0) is written, not drawn.
"""

from __future__ import annotations

import math
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from retain.records.audit import AuditRecord
from retain.report.audit_report import capability_status
from retain.report.figure_parts import new_figure, short

__all__ = ["AUDIT_FIGURES", "VERDICT_COLORS", "audit_figures", "interval_forest_figure"]

#: The names of :func:`audit_figures`, in report order.
AUDIT_FIGURES = ("interval_forest",)
#: The colour of each capability verdict (``ok``: a file written before intervals, not worse).
VERDICT_COLORS = {
    "WORSE": "#b00020",
    "UNCLEAR": "#d08000",
    "WITHIN": "#1b7f3b",
    "ok": "#1b7f3b",
}
_ZERO: dict[str, Any] = {"color": "black", "linewidth": 0.9}
_TOLERANCE: dict[str, Any] = {"color": "0.35", "linestyle": "--", "linewidth": 1.2}


def _label(name: str) -> str:
    """A capability's name as a tick label: cut to 40 characters, ``$`` kept literal (no
    mathtext)."""
    return short(name, 40).replace("$", r"\$")


def interval_forest_figure(record: AuditRecord) -> Figure | None:
    """The forest plot of ``record``'s capabilities (see the module docstring); None when the
    audit has no capability."""
    caps = record.capabilities
    if not caps:
        return None
    fig = new_figure(8.0, max(2.8, 1.3 + 0.42 * len(caps)))
    ax = fig.add_subplot()
    seen: dict[str, None] = {}
    for y, cap in enumerate(caps):
        status = capability_status(cap)
        color = VERDICT_COLORS[status]
        seen[status] = None
        interval = cap.interval
        if interval is not None and math.isfinite(interval.low) and math.isfinite(interval.high):
            middle, half = (interval.low + interval.high) / 2, (interval.high - interval.low) / 2
            ax.errorbar(middle, y, xerr=half, fmt="none", ecolor=color, elinewidth=2, capsize=4)
        point = cap.relative_degradation
        if math.isfinite(point):
            ax.plot(point, y, "o", color=color, markersize=7, zorder=3)
        else:
            note = "undefined (starting score 0)"
            ax.text(0.01, y, note, transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    ax.axvline(0.0, **_ZERO)
    ax.axvline(record.tolerance, **_TOLERANCE)
    ax.set_yticks(range(len(caps)), [_label(c.name) for c in caps])
    ax.set_ylim(len(caps) - 0.5, -0.5)  # the suite's first capability on top
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("relative degradation (% of the starting score; positive = worse)")
    ax.set_title("Change of each capability, base → tuned, with its 95 % paired interval")
    ax.grid(axis="x", alpha=0.3)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=VERDICT_COLORS[s], label=s) for s in seen
    ]
    handles.append(Line2D([], [], label=f"tolerance {record.tolerance:+.1%}", **_TOLERANCE))
    ax.legend(
        handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
    )
    return fig


def audit_figures(record: AuditRecord) -> dict[str, Figure]:
    """Every figure of ``record`` by name (:data:`AUDIT_FIGURES`), those it has data for."""
    forest = interval_forest_figure(record)
    return {} if forest is None else {"interval_forest": forest}
