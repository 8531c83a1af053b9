"""Render an audit (base vs tuned) as a terminal table and as a Markdown report.

Both show every capability's score before and after, the absolute and relative change, which
direction is better, and the one-line verdict; the HTML page (:mod:`retain.report.audit_html`)
reuses their cells (:func:`audit_rows`). Input is the audit's
:class:`~retain.records.audit.AuditRecord`, so a report can be re-rendered from a saved run
(``AuditRecord.load("results.json")``).
"""

from __future__ import annotations

import math
from typing import Any

from retain.records.audit import AuditRecord, Capability

__all__ = [
    "AUDIT_COLUMNS",
    "audit_markdown",
    "audit_rows",
    "audit_table",
    "capability_status",
    "worse_by",
]

#: The columns of :func:`audit_rows`, in order.
AUDIT_COLUMNS = (
    "capability",
    "metric",
    "better",
    "before",
    "after",
    "change",
    "relative",
    "worse by [95% CI]",
    "verdict",
)


def _num(value: float, spec: str = ".4g") -> str:
    """``value`` formatted with ``spec``; ``n/a`` when it is undefined (NaN or infinite, written
    as null)."""
    return format(value, spec) if math.isfinite(value) else "n/a"


def _detail(value: Any) -> str:
    """A probe detail as shown in the report: a float to 4 significant digits."""
    return format(value, ".4g") if isinstance(value, float) else str(value)


def worse_by(cap: Capability) -> str:
    """The relative degradation and its interval: ``+3.1% [+1.2, +5.0]`` (percent, positive =
    worse)."""
    point = _num(cap.relative_degradation + 0.0, "+.1%")  # + 0.0: no "-0.0%"
    if cap.interval is None:
        return point
    low, high = (_num(100 * v, "+.1f") for v in (cap.interval.low, cap.interval.high))
    return f"{point} [{low}, {high}]"


def capability_status(cap: Capability) -> str:
    """A capability's verdict (``WORSE``, ``WITHIN`` or ``UNCLEAR``); for a file written before
    intervals, ``WORSE`` when its point estimate worsened beyond the tolerance, else ``ok``."""
    if cap.verdict is None:  # a file written before intervals
        return "WORSE" if cap.worsened else "ok"
    return cap.verdict


def audit_rows(record: AuditRecord) -> list[tuple[str, ...]]:
    """One row of plain-text cells per capability, in :data:`AUDIT_COLUMNS` order (scores in the
    metric's unit to 4 significant digits, relative values in percent, ``n/a`` when undefined)."""
    rows: list[tuple[str, ...]] = []
    for cap in record.capabilities:
        rows.append(
            (
                cap.name,
                cap.metric,
                "higher" if cap.higher_is_better else "lower",
                _num(cap.before),
                _num(cap.after),
                _num(cap.change, "+.4g"),
                _num(cap.relative_change, "+.1%"),
                worse_by(cap),
                capability_status(cap),
            )
        )
    return rows


def audit_table(record: AuditRecord) -> str:
    """A fixed-width table for the terminal, followed by the verdict line."""
    rows = [AUDIT_COLUMNS, *audit_rows(record)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(AUDIT_COLUMNS))]
    lines = []
    for k, row in enumerate(rows):
        cells = [
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    lines.append(record.verdict.text)
    return "\n".join(lines)


def audit_markdown(record: AuditRecord) -> str:
    """The audit as a Markdown page (``report.md``)."""
    base, tuned = record.base, record.tuned
    tol = record.tolerance
    out = [
        "# retain audit",
        "",
        f"**{record.verdict.text}**",
        "",
        f"- base: `{base.name}` ({base.class_}, {base.parameters:,} parameters, {base.origin})",
        f"- tuned: `{tuned.name}` ({tuned.class_}, {tuned.parameters:,} parameters, "
        f"{tuned.origin})",
        f"- suite: `{record.suite.name}`: {record.suite.description}",
        f"- a capability is WORSE when the 95% interval of its degradation lies above {tol:.1%} "
        "of its starting score, in its own direction (`better` column), WITHIN when it lies "
        "below, UNCLEAR when it straddles it. The interval is a paired bootstrap over the "
        "probe's examples (both models scored on the same ones).",
        "",
        "| " + " | ".join(AUDIT_COLUMNS) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * 6) + "|",
    ]
    out += ["| " + " | ".join(row) + " |" for row in audit_rows(record)]
    out += [f"\n> **Warning:** {w}" for w in record.warnings]
    out += ["", "## Details", ""]
    for cap in record.capabilities:
        out.append(f"### {cap.name}")
        out.append("")
        for label, values in (("before", cap.details_before), ("after", cap.details_after)):
            details = ", ".join(
                f"{k} = {_detail(v)}" for k, v in values.items() if not isinstance(v, (dict, list))
            )
            out.append(f"- {label}: {details}")
        if cap.interval is not None:
            i = cap.interval
            out.append(
                f"- change: {_num(cap.relative_degradation, '+.2%')} worse, {i.level:.0%} "
                f"interval [{_num(i.low, '+.2%')}, {_num(i.high, '+.2%')}] over {i.examples} "
                f"paired examples ({i.resamples} resamples); {i.test} p = {_num(i.p_value, '.3g')}"
            )
        if cap.examples_needed:
            out.append(f"- about {cap.examples_needed} examples would settle it")
        out.append("")
    out.append(
        f"Generated by retain {record.retain_version} on {record.created} "
        f"in {record.seconds:.0f} s."
    )
    return "\n".join(out) + "\n"
