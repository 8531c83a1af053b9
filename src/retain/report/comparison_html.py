"""The comparison report of a sweep as HTML: one row per variant (mean ± sd over seeds, the
95 % interval, Pareto-optimal rows marked, references last with ACC as a fraction of joint),
the comparison figures and links to each run's own report."""

from __future__ import annotations

import math
from collections.abc import Sequence

from retain.records.comparison import ComparisonRow
from retain.records.run import RunRecord
from retain.report.captions import CAPTIONS, SUMMARY_LABELS, summary_format
from retain.report.comparison_plots import COMPARISON_FIGURES
from retain.report.html_page import escape, figures_section, html_table, number, page, score_label
from retain.report.summary import SUMMARY_KEYS, forgetting_cost_key

__all__ = ["comparison_html"]

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
        mean = number(stat.mean, summary_format(key))
        sd = number(stat.sd, summary_format(key, sd=True))
        single = not math.isfinite(stat.mean) or row.n < 2
        low, high = (number(v, summary_format(key)) for v in (stat.low, stat.high))
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
        labels.append(escape(SUMMARY_LABELS[key]))
        if key == "average_accuracy" and of_joint:
            labels.append("ACC as a fraction of joint")
    header = ["variant", '<th class="l">strategies</th>', "runs (seeds)", *labels]
    marks = ["pareto" if row.pareto else "" for row in rows]
    html_rows = html_table(header, [_row_cells(row, of_joint) for row in rows], marks)
    explain = (
        "<p>Mean ± sample sd over seeds; below it, the mean's 95% Student-t interval over seeds "
        f"(mean ± t·sd/√n). ★ = Pareto-optimal in (new-task score, "
        f"{escape(SUMMARY_LABELS[cost])}): no other variant is at least as good on both and "
        "better on one." + (_REFERENCES_NOTE if any(row.reference for row in rows) else "") + "</p>"
    )
    items = []
    for k, record in enumerate(records):
        label = f"{record.variant} · seed {record.seed}"
        if k < len(links):
            items.append(f'<li><a href="{escape(links[k])}">{escape(label)}</a></li>')
        else:
            items.append(f"<li>{escape(label)}</li>")
    score = score_label(records[0].score) if records else "score"
    body = [
        f"<h1>Comparison: {escape(', '.join(names))}</h1>",
        f"<p>{len(rows)} variants, {len(records)} runs; score: {escape(score)}; models: "
        f"{escape(', '.join(sorted({r.model for r in records})))}.</p>",
        "<h2>Variants</h2>" + explain + html_rows,
        figures_section(images, COMPARISON_FIGURES, CAPTIONS),
        "<h2>Runs</h2><ul>" + "".join(items) + "</ul>",
    ]
    return page("comparison: " + ", ".join(names), "\n".join(body))
