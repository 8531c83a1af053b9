"""Fixed-width terminal tables of a run and of a comparison (``retain run``/``sweep``/``demo``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from retain.records.comparison import ComparisonRow, MeanSd
from retain.records.run import RunResult

__all__ = ["comparison_table", "run_table"]

_COLUMNS = (
    ("ACC", "average_accuracy", "{:.3f}"),
    ("new-task", "new_task_score", "{:.3f}"),
    ("BWT", "backward_transfer", "{:+.3f}"),
    ("forgetting", "forgetting", "{:.3f}"),
    ("capability", "capability_degradation", "{:+.1%}"),
    ("time s", "seconds", "{:.0f}"),
)


def _cell(figure: MeanSd, n: int, spec: str) -> str:
    if not math.isfinite(figure.mean):
        return "n/a"
    text = spec.format(figure.mean)
    if math.isfinite(figure.sd) and figure.sd and n > 1:
        text += " ± " + spec.replace("+", "").format(figure.sd)
    return text


def _layout(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def comparison_table(rows: Sequence[ComparisonRow]) -> str:
    """One line per variant: average accuracy, new-task score, BWT, forgetting, capability
    degradation, seconds (mean ± sd over seeds), ``*`` marking the Pareto-optimal variants;
    with a ``joint`` reference, each row's average accuracy as a fraction of joint's. The
    references (``joint``, ``single``) come last, marked ``(reference)``."""
    of_joint = any(math.isfinite(row.of_joint) for row in rows)
    head = ["variant", "seeds", *(title for title, _, _ in _COLUMNS)]
    table = [head[:3] + (["of joint"] if of_joint else []) + head[3:]]
    ordered = [r for r in rows if r.reference is None] + [r for r in rows if r.reference]
    for row in ordered:
        name = (
            row.variant + (" *" if row.pareto else "") + (" (reference)" if row.reference else "")
        )
        figures = [_cell(row.figure(key), row.n, spec) for _, key, spec in _COLUMNS]
        share = [_num(row.of_joint, ".1%")] if of_joint else []
        table.append([name, str(row.n), figures[0], *share, *figures[1:]])
    legend = (
        "ACC: mean final score over the tasks; new-task: mean score on each task right after "
        "training it; BWT: backward transfer (negative = forgotten); capability: worst relative "
        "degradation of the suite (positive = worse); * Pareto-optimal"
    )
    if of_joint:
        legend += (
            "; of joint: ACC over the joint reference's (all tasks' data trained at once, the "
            "upper bound); single: each task trained alone"
        )
    return _layout(table) + "\n" + legend


def run_table(run: RunResult) -> str:
    """The score matrix ``R[t][i]`` of one run with its metrics, for the terminal (a joint
    reference: its one trained row; a single reference: each task trained alone)."""
    tasks = run.tasks
    table = [["after \\ on", *tasks]]
    table.append(["(start)", *(_num(b) for b in run.baseline)])
    for t, row in enumerate(run.matrix):
        if run.mode == "joint" and t < len(run.matrix) - 1:
            continue  # never trained to: the joint reference trains once, on every task
        label = tasks[t]
        if run.mode == "joint":
            label = "all (joint)"
        elif run.mode == "single":
            label = f"{tasks[t]} alone"
        table.append([label, *(_num(x) for x in row)])
    m = run.metrics
    tail = (
        f"ACC {_num(m.average_accuracy)}  BWT {_num(m.backward_transfer, '+.3f')}"
        f"  FWT {_num(m.forward_transfer, '+.3f')}"
        f"  forgetting {_num(m.average_forgetting)}"
    )
    return _layout(table) + "\n" + tail


def _num(value: float, spec: str = ".3f") -> str:
    return format(value, spec) if math.isfinite(value) else "n/a"
