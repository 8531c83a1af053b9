"""Building blocks shared by retain's figures: free-standing figures, number and name formatting,
the global-step axis of a run, legends, colours and annotated heatmaps.

Figures are built with :class:`~matplotlib.figure.Figure` directly, never through ``pyplot``: no
global state, so they work headless and in threads. Steps: records that count optimizer steps
from 0 at each task's start are placed on a *global step* axis by shifting task ``t`` by the steps
of the tasks before it (``sum_{s<t} record.run.logs[s].steps`` of a
:class:`~retain.records.run.RunRecord`), task boundaries drawn as dashed lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import NDArray

from retain.records.run import RunRecord

__all__ = [
    "BOUNDARY",
    "color_map",
    "floats",
    "fmt",
    "heatmap",
    "legend",
    "new_figure",
    "short",
    "steps_axis",
    "task_offsets",
]

# Artist styles of the shared parts.
BOUNDARY: dict[str, Any] = {"color": "0.5", "linestyle": "--", "linewidth": 0.8}
_TOP: dict[str, Any] = {"ha": "center", "fontsize": 7}
_CELL: dict[str, Any] = {"ha": "center", "va": "center", "fontsize": 7.5}


def new_figure(width: float, height: float) -> Figure:
    """A free-standing figure (no pyplot) with constrained layout; size in inches."""
    return Figure(figsize=(width, height), layout="constrained")


def short(name: str, width: int = 28) -> str:
    """``name`` cut to ``width`` characters, keeping its end (``…`` marks the cut)."""
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def fmt(value: float | None, spec: str = ".3g") -> str:
    """``value`` formatted with ``spec``, or ``"n/a"`` when undefined."""
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def floats(values: Sequence[float | None]) -> NDArray[np.float64]:
    """``values`` as float64 (an undefined value, ``NaN`` or None, as ``NaN``)."""
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def task_offsets(record: RunRecord, count: int) -> list[float]:
    """Global step at the start of each of ``count`` tasks (``sum_{s<t} logs[s].steps``; a task
    without a log counts 0 steps)."""
    steps = [float(log.steps) for log in record.run.logs[:count]]
    steps += [0.0] * (count - len(steps))
    return [float(sum(steps[:t])) for t in range(count)]


def steps_axis(
    ax: Axes, record: RunRecord, offsets: Sequence[float], title: str, names: bool = True
) -> None:
    """Global-step x axis: dashed task boundaries and (``names``) task names over their spans."""
    tasks = record.run.tasks
    lo, hi = ax.get_xlim()
    ends = [*offsets[1:], max(hi, offsets[-1])] if offsets else []
    for t, (start, end) in enumerate(zip(offsets, ends, strict=True)):
        if t > 0:
            ax.axvline(start, **BOUNDARY)
        middle = (max(start, lo) + min(end, hi)) / 2
        if names and t < len(tasks) and lo <= middle <= hi and end > start:
            label = short(tasks[t], max(4, int(60 * (min(end, hi) - max(start, lo)) / (hi - lo))))
            ax.text(middle, 1.01, label, transform=ax.get_xaxis_transform(), **_TOP)
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("global optimizer step")
    ax.set_title(title, pad=14)
    ax.grid(alpha=0.3)


def legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def color_map(names: Sequence[str]) -> dict[str, Any]:
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(k % cmap.N) for k, name in enumerate(names)}


def heatmap(
    fig: Figure,
    ax: Axes,
    data: NDArray[np.float64],
    cmap: str,
    label: str,
    spec: str,
    annotate: bool,
) -> None:
    """``data`` as an image with a colour bar, cells annotated with ``spec`` when ``annotate``."""
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, aspect="auto")
    fig.colorbar(image, ax=ax, label=label)
    finite = data[np.isfinite(data)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for (r, c), value in np.ndenumerate(data) if annotate else ():
        dark = hi == lo or not math.isfinite(value) or (value - lo) / (hi - lo) < 0.6
        ax.text(c, r, fmt(float(value), spec), color="white" if dark else "black", **_CELL)
