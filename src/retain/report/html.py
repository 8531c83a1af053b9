"""Self-contained HTML reports of one run and of a comparison of variants.

Each report is ONE file: CSS inline, figures embedded as ``data:image/png;base64`` URIs, no
external URL and no JavaScript, so it opens offline, from an e-mail attachment or an artifact
store. Every string that comes from a config or a result (experiment, task and capability names,
stop reasons, versions) is HTML-escaped. The page helpers (:func:`escape`, :func:`number`,
:func:`html_table`, :func:`figure_html`, :func:`page`) serve the diagnosis report too
(:mod:`retain.report.diagnose_report`).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from retain.paired_statistics import judge_interval
from retain.records.comparison import ComparisonRow
from retain.records.parts import Score
from retain.records.run import InterferenceRecord, RunRecord, RunResult, ShiftRecord
from retain.report.comparison_plots import COMPARISON_FIGURES
from retain.report.plots import RUN_DIAGNOSTIC_FIGURES, RUN_FIGURES
from retain.report.summary import SUMMARY_KEYS, forgetting_cost_key, run_summary

__all__ = [
    "CAPTIONS",
    "CSS",
    "comparison_html",
    "escape",
    "figure_html",
    "html_table",
    "number",
    "page",
    "run_report_html",
]

#: What each figure shows, by the names of :data:`~retain.report.plots.RUN_FIGURES`,
#: :data:`~retain.report.plots.RUN_DIAGNOSTIC_FIGURES` and
#: :data:`~retain.report.comparison_plots.COMPARISON_FIGURES`.
CAPTIONS = {
    "score_matrix": "Score matrix R[t][i]: the score on task i (column) after training task t "
    "(row). The diagonal is each task right after it was learned; values below it falling "
    "along a column are forgetting.",
    "task_curves": "Score of every task after each training stage; stage 0 is the model before "
    "any training. The ring marks the stage where the task itself was trained.",
    "degradation": "Relative degradation of each watched capability (positive = worse than the "
    "start) over global optimizer steps, the worst one in black; red dashed: the monitor's "
    "budget; x: where the monitor stopped a task, with its reason; dashed verticals: task "
    "boundaries. Without a monitor: the suite's degradation after each task.",
    "loss": "Training loss per optimizer step over the whole sequence (global steps); from 100 "
    "steps on, also its mean over every 1/50 of the steps (the darker line); dashed verticals: "
    "task boundaries.",
    "budget": "Forgetting budget controller: the penalty strength it set (top) and the worst "
    "relative degradation it measured (bottom) against the budget (red dashed).",
    "drift": "Relative drift ||θ_t − θ_0|| / ||θ_0|| of each layer's parameters from the "
    "starting model, after each task.",
    "layer_lrs": "Learning rate of each parameter group (layer-wise learning rates).",
    "unfreezing": "Gradual unfreezing: number of trainable blocks over global steps, per task.",
    "interference": "Gradient interference during training: every measured optimizer step, the "
    "cosine <g_step, g_prior> / (||g_step|| ||g_prior||) between the step's gradient and the "
    "prior capability's gradient on a fixed reference sample (dimensionless, -1 to 1), and (from "
    "8 measurements on) its moving average. Below zero (red) the step raised the prior loss to "
    "first order: the gradients conflict. Dashed verticals: task boundaries.",
    "representation": "Representational shift of the final model from the reference model (the "
    "start of the run, or the model right after the first task: see the Diagnostics table): "
    "linear CKA ||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F) between the two models' centred hidden "
    "states of the same tokens (the first of each sequence left out), per layer (0 = "
    "embeddings, k + 1 = output of block k); 1 = the same representation up to rotation and "
    "scale, lower = changed more.",
    "output_kl": "Output shift of the final model from the reference model on general text: "
    "histogram of the next-token KL(p_ref || q_final) = Σ_v p_v (log p_v − log q_v) per token "
    "position, in nats (red: the mean), and the tokens whose mean predicted probability rose "
    "(blue) or fell (red) the most.",
    "pareto": "Plasticity (mean new-task score, right is better) against forgetting cost (down "
    "is better) per variant, error bars = sample sd over seeds. Red stars joined by a line: the "
    "Pareto-optimal variants (no other variant is at least as good on both axes and better on "
    "one).",
    "transfer": "Backward transfer (negative = forgot) and average forgetting (positive = forgot) "
    "per variant, mean ± sample sd over seeds. The other sign means the earlier tasks got better "
    "after later training (replay and joint objectives can do that): positive BWT, negative "
    "forgetting.",
}

_LABELS = {
    "new_task_score": "new-task score (mean R[t][t])",
    "average_accuracy": "average final score (ACC)",
    "backward_transfer": "backward transfer (BWT)",
    "forgetting": "average forgetting",
    "capability_degradation": "worst capability degradation (last task)",
    "seconds": "wall-clock seconds",
}

#: The inline style sheet of every report page.
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}td{white-space:nowrap}
td.l{white-space:normal;max-width:30em}.wrap{overflow-x:auto}
th{background:#f3f3f3}td.l,th.l{text-align:left}
td.diag{background:#e8f0fe;font-weight:600}tr.pareto td{background:#fff4e5}
.worse{color:#b00020}.ci{color:#666;font-size:.85em}.meta td{text-align:left}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.88em;color:#555;max-width:900px}
"""


def escape(value: Any) -> str:
    """``str(value)`` with ``& < > " '`` escaped for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def number(value: Any, spec: str = ".4g") -> str:
    """A finite int or float formatted with ``spec``; ``"n/a"`` for anything else (None, NaN,
    booleans, strings)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    return format(value, spec) if math.isfinite(value) else "n/a"


def _figure_spec(key: str, sd: bool = False) -> str:
    """Format of a summary figure (``sd``: of its standard deviation, unsigned, 2 digits)."""
    if key == "capability_degradation":
        return ".1%" if sd else "+.1%"
    if key == "seconds":
        return ".1f"
    return ".2g" if sd else ".4g"


def html_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], row_classes: Sequence[str] = ()
) -> str:
    """A table of rows of already-escaped cell HTML; a header or cell starting with
    ``<th``/``<td`` is kept as it is (its own attributes); rows get ``row_classes``. Scrolls
    sideways when too wide."""
    head = "".join(
        h if h.startswith("<th") else f'<th class="l">{h}</th>' if k == 0 else f"<th>{h}</th>"
        for k, h in enumerate(header)
    )
    body = []
    for k, row in enumerate(rows):
        cells = [c if c.startswith("<td") else f"<td>{c}</td>" for c in row]
        if cells and not row[0].startswith("<td"):
            cells[0] = f'<td class="l">{row[0]}</td>'
        cls = f' class="{row_classes[k]}"' if k < len(row_classes) and row_classes[k] else ""
        body.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="wrap">{table}</div>'


def figure_html(name: str, png: bytes, caption: str) -> str:
    """A ``<figure id="fig-<name>">`` with ``png`` embedded as a base64 data URI and its caption
    (both escaped)."""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="fig-{escape(name)}"><img alt="{escape(caption)}" '
        f'src="data:image/png;base64,{data}"><figcaption><b>{escape(name)}</b>: '
        f"{escape(caption)}</figcaption></figure>"
    )


def _images(images: Mapping[str, bytes], order: Sequence[str]) -> str:
    names = [n for n in order if n in images] + [n for n in images if n not in order]
    parts = [figure_html(name, images[name], CAPTIONS.get(name, name)) for name in names]
    return "<h2>Figures</h2>" + "".join(parts) if parts else ""


def page(title: str, body: str) -> str:
    """A whole HTML document: ``title`` (escaped), the inline :data:`CSS` and ``body`` (HTML)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def _score(score: Score) -> str:
    direction = "higher" if score.higher_is_better else "lower"
    return f"{score.name} ({direction} is better)"


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
        ("score", _score(record.score)),
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
        [escape(_LABELS[k]), number(getattr(summary, k), _figure_spec(k))] for k in SUMMARY_KEYS
    ]
    budget = None if record.monitor is None else record.monitor.max_degradation
    body = [
        _header(record),
        "<h2>Summary</h2>" + html_table(["figure", "value"], rows),
        _matrix_table(record.run),
        _suite_table(record.run, budget),
        _monitor_table(record.run),
        _diagnostics_table(record),
        _images(images, (*RUN_FIGURES, *RUN_DIAGNOSTIC_FIGURES)),
    ]
    title = f"{record.name} · {record.variant}"
    return page(title, "\n".join(b for b in body if b))


_REFERENCES_NOTE = (
    " References: <b>joint</b> trains all tasks' data at once (the upper bound of each task's "
    "score), <b>single</b> trains each task alone from the starting model (the new-task score "
    "without interference); nothing comes after them, so they have no BWT or forgetting."
)


def _row_cells(row: ComparisonRow, of_joint: bool) -> list[str]:
    cells = [
        escape(row.variant)
        + (" ★" if row.pareto else "")
        + (" (reference)" if row.reference else ""),
        f'<td class="l">{escape(row.strategies)}</td>',
        escape(f"{row.n} ({', '.join(str(s) for s in row.seeds)})"),
    ]
    for key in SUMMARY_KEYS:
        stat = row.figure(key)
        mean = number(stat.mean, _figure_spec(key))
        sd = number(stat.sd, _figure_spec(key, sd=True))
        single = not math.isfinite(stat.mean) or row.n < 2
        low, high = (number(v, _figure_spec(key)) for v in (stat.low, stat.high))
        interval = f'<br><span class="ci">[{low}, {high}]</span>' if math.isfinite(stat.low) else ""
        cells.append(mean if single else f"{mean} ± {sd}{interval}")
        if key == "average_accuracy" and of_joint:
            cells.append(number(row.of_joint, ".1%"))
    return cells


def comparison_html(
    rows: list[ComparisonRow],
    records: list[RunRecord],
    images: dict[str, bytes],
    *,
    links: Sequence[str] = (),
) -> str:
    """The comparison report: aggregate table (mean ± sd, Pareto rows marked), figures, run links.

    ``rows`` come from :func:`~retain.report.summary.aggregate` of ``records``; ``links[k]`` is
    the (relative) path to the report of ``records[k]``.
    """
    names = sorted({r.name for r in records})
    rows = [r for r in rows if r.reference is None] + [r for r in rows if r.reference]
    cost = forgetting_cost_key([r for r in rows if r.reference is None] or rows)
    of_joint = any(math.isfinite(row.of_joint) for row in rows)
    labels = []
    for key in SUMMARY_KEYS:
        labels.append(escape(_LABELS[key]))
        if key == "average_accuracy" and of_joint:
            labels.append("ACC as a fraction of joint")
    header = ["variant", '<th class="l">strategies</th>', "runs (seeds)", *labels]
    marks = ["pareto" if row.pareto else "" for row in rows]
    html_rows = html_table(header, [_row_cells(row, of_joint) for row in rows], marks)
    explain = (
        "<p>Mean ± sample sd over seeds; below it, the mean's 95% Student-t interval over seeds "
        f"(mean ± t·sd/√n). ★ = Pareto-optimal in (new-task score, "
        f"{escape(_LABELS[cost])}): no other variant is at least as good on both and better on one."
        + (_REFERENCES_NOTE if any(row.reference for row in rows) else "")
        + "</p>"
    )
    items = []
    for k, record in enumerate(records):
        label = f"{record.variant} · seed {record.seed}"
        if k < len(links):
            items.append(f'<li><a href="{escape(links[k])}">{escape(label)}</a></li>')
        else:
            items.append(f"<li>{escape(label)}</li>")
    score = _score(records[0].score) if records else "score"
    body = [
        f"<h1>Comparison: {escape(', '.join(names))}</h1>",
        f"<p>{len(rows)} variants, {len(records)} runs; score: {escape(score)}; models: "
        f"{escape(', '.join(sorted({r.model for r in records})))}.</p>",
        "<h2>Variants</h2>" + explain + html_rows,
        _images(images, COMPARISON_FIGURES),
        "<h2>Runs</h2><ul>" + "".join(items) + "</ul>",
    ]
    return page("comparison: " + ", ".join(names), "\n".join(body))
