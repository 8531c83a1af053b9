"""The HTML report of one run: ``report.html`` of a run directory.

Its header (experiment, model, strategies, training, monitor and budget settings, versions), the
score matrix, the suite's capabilities against the budget, the monitor's decisions, the
diagnostics and every figure with its caption, on one self-contained page
(:mod:`retain.report.html_page`). The comparison of several runs is
:mod:`retain.report.comparison_html`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from retain.paired_statistics import judge_interval
from retain.records.run import InterferenceRecord, RunRecord, RunResult, ShiftRecord
from retain.report.captions import CAPTIONS, SUMMARY_LABELS, summary_format
from retain.report.html_page import escape, figures_section, html_table, number, page, score_label
from retain.report.plots import RUN_DIAGNOSTIC_FIGURES, RUN_FIGURES
from retain.report.summary import SUMMARY_KEYS, run_summary

__all__ = ["run_report_html"]


def _settings(values: Mapping[str, Any], keys: Sequence[str] | None = None) -> str:
    """``key=value, ...`` of a settings mapping (only ``keys`` when given)."""
    return ", ".join(f"{k}={values[k]}" for k in (keys or list(values)) if k in values)


def _training_keys(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The training settings worth showing: ``epochs`` only where it limits the run (with
    ``max_steps`` set, at least one step an epoch means ``epochs >= max_steps`` never does)."""
    limits = {
        k: v for k, v in config.items() if k in ("epochs", "max_steps") and isinstance(v, int)
    }
    limited = not ("max_steps" in limits and limits["epochs"] >= limits["max_steps"])
    shown = ("lr", "batch_size", "epochs", "max_steps")
    return shown if limited else ("lr", "batch_size", "max_steps")


def _header(record: RunRecord) -> str:
    run = record.run
    versions = ", ".join(f"{k} {v}" for k, v in run.versions.items())
    training = _settings(run.config, _training_keys(run.config))
    monitor = "none" if record.monitor is None else _settings(record.monitor.to_json())
    budget = "none"
    if record.budget is not None:
        budget = _settings({k: v for k, v in record.budget.to_json().items() if k != "history"})
    meta = [
        ("description", record.description),
        ("variant", record.variant),
        ("seed", str(record.seed)),
        ("model", record.model),
        ("strategies", run.strategies),
        ("score", score_label(record.score)),
        ("tasks", ", ".join(run.tasks)),
        ("training", training),
        ("monitor", monitor),
        ("forgetting budget", budget),
        ("library versions", versions),
    ]
    rows = "".join(
        f'<tr><th class="l">{escape(k)}</th><td class="l">{escape(v)}</td></tr>'
        for k, v in meta
        if v != ""
    )
    return f'<h1>{escape(record.name)}</h1><table class="meta">{rows}</table>'


def _matrix_table(run: RunResult) -> str:
    tasks, baseline = run.tasks, run.baseline
    rows = [
        ["before training"]
        + [number(baseline[i]) if i < len(baseline) else "n/a" for i in range(len(tasks))]
    ]
    for t, row in enumerate(run.matrix):
        cells = [
            f'<td class="diag">{number(v)}</td>' if i == t else number(v) for i, v in enumerate(row)
        ]
        rows.append([f"after {escape(tasks[t]) if t < len(tasks) else t}", *cells])
    header = ["after training ↓ / evaluated on →", *(escape(t) for t in tasks)]
    return "<h2>Score matrix</h2>" + html_table(header, rows)


def _suite_table(run: RunResult, budget: float | None) -> str:
    suite = run.suite
    if suite is None or not suite.baseline:
        return ""
    tolerance = 0.0 if budget is None else budget
    rows = []
    for cap, base in suite.baseline.items():
        cells = [escape(cap), number(base)]
        for t in range(len(suite.after)):
            rel = suite.degradation_after(t, cap)
            text = f"{number(suite.score_after(t, cap))} ({number(rel, '+.1%')})"
            interval = suite.interval_after(t, cap)
            if interval is None:
                worse = math.isfinite(rel) and budget is not None and rel > budget
                cells.append(f'<td class="worse">{text}</td>' if worse else text)
                continue
            low, high = (number(100 * v, "+.1f") for v in (interval.low, interval.high))
            verdict = judge_interval(rel, interval.low, interval.high, interval.examples, tolerance)
            text += f" [{low}, {high}] {verdict.verdict}"
            cells.append(f'<td class="worse">{text}</td>' if verdict.verdict == "WORSE" else text)
        rows.append(cells)
    shown = run.tasks[: len(suite.after)]
    header = ["capability", "baseline", *(f"after {escape(t)}" for t in shown)]
    limit = "the budget" if budget is not None else "0 (no budget: WORSE means surely worse)"
    note = (
        "<p>Score after each task (relative degradation against the baseline, + = worse), "
        "its 95% paired bootstrap interval in percent over the probe's examples, and the "
        f"verdict at {limit}: WORSE when the interval lies above it, WITHIN when below, "
        "UNCLEAR when it straddles it.</p>"
    )
    return f"<h2>Capability suite: {escape(suite.name)}</h2>{note}" + html_table(header, rows)


def _monitor_table(run: RunResult) -> str:
    logs = run.logs
    if not any(log.monitor is not None or log.stop_reason for log in logs):
        return ""
    rows = []
    for log in logs:
        mon = log.monitor
        reason = log.stop_reason if mon is None else mon.reason or log.stop_reason
        rows.append(
            [
                escape(log.task),
                number(log.steps, "d"),
                "yes" if log.stopped or (mon is not None and mon.stopped) else "no",
                f'<td class="l">{escape(reason) if reason else "not monitored"}</td>',
                number(None if mon is None else mon.best_step, "d"),
                "yes" if mon is not None and mon.restored else "no",
                number(math.nan if mon is None else mon.final_worst_degradation, "+.1%"),
            ]
        )
    header = ["task", "steps", "stopped", "reason", "best step", "restored", "final worst degr."]
    return "<h2>Forgetting monitor</h2>" + html_table(header, rows)


def _interference_rows(interference: InterferenceRecord) -> list[list[str]]:
    summary = interference.summary
    return [
        ["interference: prior capability", escape(interference.prior)],
        ["interference: measured every", f"{number(interference.every, 'd')} steps"],
        ["interference: measured steps", number(summary.measured, "d")],
        ["interference: conflicting (cosine &lt; 0)", number(summary.conflicting, ".1%")],
        ["interference: mean cosine", number(summary.mean_cosine, "+.3f")],
    ]


def _shift_rows(shift: ShiftRecord) -> list[list[str]]:
    rows = [
        ["shift: measured on", escape(shift.data)],
        ["shift: reference model", escape(shift.reference)],
    ]
    layers = [r for r in shift.representation or [] if math.isfinite(r.cka)]
    if layers:
        low = min(layers, key=lambda r: r.cka)
        rows.append(["shift: lowest CKA", f"{number(low.cka, '.4f')} ({escape(low.name)})"])
    if shift.output is not None:
        rows.append(["shift: next-token KL mean (nats)", number(shift.output.kl_mean, ".4f")])
        rows.append(["shift: entropy change (nats)", number(shift.output.entropy_change, "+.4f")])
    for name, reason in shift.skipped.items():
        rows.append(
            [f"shift: {escape(name)}", f'<td class="l">not computed: {escape(reason)}</td>']
        )
    return rows


def _diagnostics_table(record: RunRecord) -> str:
    """Gradient interference summary and what the shift was measured on (or why not)."""
    rows = []
    if record.interference is not None:
        rows += _interference_rows(record.interference)
    if record.shift is not None:
        rows += _shift_rows(record.shift)
    return "<h2>Diagnostics</h2>" + html_table(["figure", "value"], rows) if rows else ""


def run_report_html(record: RunRecord, images: dict[str, bytes]) -> str:
    """The report of one run: header, summary, score matrix, suite, monitor, diagnostics,
    figures.

    ``record`` is a run's ``results.json``; ``images`` maps figure names (see :data:`CAPTIONS`)
    to PNG bytes, embedded in :data:`~retain.report.plots.RUN_FIGURES`, then
    :data:`~retain.report.plots.RUN_DIAGNOSTIC_FIGURES` order.
    """
    summary = run_summary(record)
    rows = [
        [escape(SUMMARY_LABELS[k]), number(getattr(summary, k), summary_format(k))]
        for k in SUMMARY_KEYS
    ]
    budget = None if record.monitor is None else record.monitor.max_degradation
    body = [
        _header(record),
        "<h2>Summary</h2>" + html_table(["figure", "value"], rows),
        _matrix_table(record.run),
        _suite_table(record.run, budget),
        _monitor_table(record.run),
        _diagnostics_table(record),
        figures_section(images, (*RUN_FIGURES, *RUN_DIAGNOSTIC_FIGURES), CAPTIONS),
    ]
    title = f"{record.name} · {record.variant}"
    return page(title, "\n".join(b for b in body if b))
