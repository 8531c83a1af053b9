"""The audit as one self-contained HTML page: ``report.html`` of ``retain audit``.

Input is the audit's :class:`~retain.records.audit.AuditRecord`. The page has the verdict line
(coloured by its outcome: FORGOT, UNCLEAR or RETAINED), a header (suite, base and tuned models,
tolerance, when and by which retain version), the table of every capability (the columns of
:data:`~retain.report.audit_report.AUDIT_COLUMNS` plus the paired test, its p-value and the
number of paired examples), the forest plot of :mod:`retain.report.audit_plots` and the probes'
details. Like the other reports it is one file: CSS inline, the PNG as a base64 data URI, no URL,
no JavaScript, every string from the record HTML-escaped. :func:`write_audit_html` also saves
the figure as ``plots/interval_forest.png``, as the run and diagnosis reports do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from retain.atomic_files import write_bytes, write_text
from retain.records.audit import AuditRecord, Capability
from retain.records.parts import ModelInfo
from retain.report.audit_plots import AUDIT_FIGURES, VERDICT_COLORS, audit_figures
from retain.report.audit_report import AUDIT_COLUMNS, audit_rows, capability_status
from retain.report.html_page import escape, figure_html, html_table, number, page
from retain.report.write import png_bytes

__all__ = ["AUDIT_CAPTIONS", "OUTCOME_COLORS", "audit_html", "write_audit_html"]

#: What each figure shows, by the names of :data:`~retain.report.audit_plots.AUDIT_FIGURES`.
AUDIT_CAPTIONS = {
    "interval_forest": "Relative degradation of each capability from base to tuned (percent of "
    "the starting score, positive = worse in the capability's own direction), with its 95 % "
    "paired bootstrap interval over the probe's examples as a horizontal bar. Solid line: no "
    "change; dashed: the tolerance. Colour: the verdict (red WORSE: the interval lies above the "
    "tolerance; green WITHIN: below it; orange UNCLEAR: across it). A capability without "
    "per-example scores has no bar and is judged on its point estimate.",
}
#: The colour of each audit outcome (the verdict line).
OUTCOME_COLORS = {"FORGOT": "#b00020", "UNCLEAR": "#b26a00", "RETAINED": "#1b7f3b"}
# Columns of AUDIT_COLUMNS whose text is a name, left-aligned like the first.
_LEFT = (1, 2)


def _outcome(record: AuditRecord) -> str:
    """The audit's outcome; for a file written before intervals, from ``degraded``."""
    if record.verdict.outcome is not None:
        return record.verdict.outcome
    return "FORGOT" if record.verdict.degraded else "RETAINED"


def _verdict_line(record: AuditRecord) -> str:
    color = OUTCOME_COLORS[_outcome(record)]
    style = (
        f"font-size:1.3em;font-weight:700;color:{color};border-left:6px solid {color};"
        "padding:.35em .8em;background:#f7f7f7"
    )
    return f'<p id="verdict" style="{style}">{escape(record.verdict.text)}</p>'


def _model(info: ModelInfo) -> str:
    where = f", {info.path}" if info.path and info.path != info.name else ""
    return f"{info.name} ({info.class_}, {info.parameters:,} parameters, {info.origin}{where})"


def _title(record: AuditRecord) -> str:
    return f"retain audit: {record.base.name} → {record.tuned.name}"


def _header(record: AuditRecord) -> str:
    suite = record.suite
    described = f": {suite.description}" if suite.description else ""
    meta = [
        ("suite", f"{suite.name} ({suite.size}){described}"),
        ("base", _model(record.base)),
        ("tuned", _model(record.tuned)),
        (
            "tolerance",
            f"{number(record.tolerance, '.1%')} of the starting score, in each capability's "
            "own direction",
        ),
        ("created", record.created),
        ("retain version", record.retain_version),
        ("seconds", number(record.seconds, ".1f")),
    ]
    rows = "".join(
        f'<tr><th class="l">{escape(k)}</th><td class="l">{escape(v)}</td></tr>' for k, v in meta
    )
    warnings = "".join(f'<p class="worse"><b>Warning:</b> {escape(w)}</p>' for w in record.warnings)
    return (
        f"<h1>{escape(_title(record))}</h1>{_verdict_line(record)}"
        f'<table class="meta">{rows}</table>{warnings}'
    )


def _cells(cap: Capability, texts: tuple[str, ...]) -> list[str]:
    """The HTML cells of one capability: ``texts`` (:func:`audit_rows`) escaped, the verdict
    coloured, then the paired test, its p-value and the paired examples."""
    cells = [
        f'<td class="l">{escape(t)}</td>' if k in _LEFT else escape(t) for k, t in enumerate(texts)
    ]
    status = capability_status(cap)
    cells[-1] = f'<td style="color:{VERDICT_COLORS[status]};font-weight:700">{escape(status)}</td>'
    interval = cap.interval
    if interval is None:
        return [*cells, "none", "n/a", "n/a"]
    return [
        *cells,
        escape(interval.test),
        number(interval.p_value, ".3g"),
        number(interval.examples, ","),
    ]


def _capability_table(record: AuditRecord) -> str:
    header = [
        *(
            f'<th class="l">{escape(c)}</th>' if k in _LEFT else escape(c)
            for k, c in enumerate(AUDIT_COLUMNS)
        ),
        "paired test",
        "p-value",
        "paired examples",
    ]
    rows = [
        _cells(cap, texts)
        for cap, texts in zip(record.capabilities, audit_rows(record), strict=True)
    ]
    note = (
        "<p>Scores in each metric's own unit; <i>change</i> = after − before; <i>relative</i> = "
        "change / |before|; <i>worse by</i> = the relative degradation (positive = worse in the "
        "direction of the <i>better</i> column) and its 95% paired bootstrap interval in percent. "
        f"A capability is WORSE when the interval lies above the tolerance "
        f"({number(record.tolerance, '.1%')}), WITHIN when it lies below, UNCLEAR when it "
        "straddles it. The p-value is the paired test's, of “no change”: McNemar's exact test "
        "for paired correctness, a paired permutation test otherwise.</p>"
    )
    return "<h2>Capabilities</h2>" + note + html_table(header, rows)


def _details(values: Mapping[str, Any]) -> str:
    """A probe's details as ``key = value, ...`` (floats to 4 significant digits; nested
    values left out)."""
    return ", ".join(
        f"{k} = {number(v) if isinstance(v, float) else v}"
        for k, v in values.items()
        if not isinstance(v, (dict, list))
    )


def _details_table(record: AuditRecord) -> str:
    rows = []
    for cap in record.capabilities:
        interval = cap.interval
        shown = "none (judged on the point estimate)"
        if interval is not None:
            shown = (
                f"{number(interval.level, '.0%')}: [{number(interval.low, '+.2%')}, "
                f"{number(interval.high, '+.2%')}], {number(interval.resamples, ',')} resamples"
            )
        settle = "" if not cap.examples_needed else f"about {cap.examples_needed:,} examples"
        rows.append(
            [
                escape(cap.name),
                f'<td class="l">{escape(_details(cap.details_before))}</td>',
                f'<td class="l">{escape(_details(cap.details_after))}</td>',
                f'<td class="l">{escape(shown)}</td>',
                escape(settle),
            ]
        )
    header = [
        "capability",
        *(f'<th class="l">{h}</th>' for h in ("base details", "tuned details", "interval")),
        "would settle it",
    ]
    return "<h2>Probe details</h2>" + html_table(header, rows)


def audit_html(record: AuditRecord, images: Mapping[str, bytes]) -> str:
    """The page of an audit; ``images`` maps figure names (:data:`AUDIT_CAPTIONS`) to PNG bytes
    (absent: no figure)."""
    figures = [figure_html(n, images[n], AUDIT_CAPTIONS[n]) for n in AUDIT_FIGURES if n in images]
    footer = (
        f"<p>Generated by retain {escape(record.retain_version)} on {escape(record.created)} in "
        f"{number(record.seconds, '.0f')} s.</p>"
    )
    body = [
        _header(record),
        _capability_table(record),
        "<h2>Figure</h2>" + "".join(figures) if figures else "",
        _details_table(record),
        footer,
    ]
    return page(_title(record), "\n".join(b for b in body if b))


def write_audit_html(folder: Path, record: AuditRecord) -> Path:
    """Write ``folder/plots/<figure>.png`` (:func:`~retain.report.audit_plots.audit_figures`) and
    ``folder/report.html`` (:func:`audit_html`, the same PNGs embedded), each atomically; returns
    the report's path."""
    folder = Path(folder)
    images = {}
    for name, figure in audit_figures(record).items():
        (folder / "plots").mkdir(parents=True, exist_ok=True)
        images[name] = png_bytes(figure)
        write_bytes(folder / "plots" / f"{name}.png", images[name])
    report = folder / "report.html"
    write_text(report, audit_html(record, images))
    return report
