"""The terminal summary of ``retain diagnose``: one line of headline figures per computed
diagnostic, then the diagnostics not computed with the reason."""

from __future__ import annotations

from retain.records.diagnose import DiagnoseRecord
from retain.report.diagnose_sections import SECTIONS, not_computed, ranked, share
from retain.report.html_page import number

__all__ = ["diagnose_table"]


def _headlines(record: DiagnoseRecord) -> dict[str, str]:
    """One line of headline figures per computed diagnostic, by section name."""
    lines: dict[str, str] = {}
    if record.drift is not None:
        total = record.drift.total
        text = f"relative {number(total.relative, '.3g')}, RMS {number(total.rms)}"
        top = ranked(record.drift.layers, lambda g: g.relative, reverse=True)
        if top and not top[0].relative:
            text += "; no layer moved"
        elif top:
            text += f"; most drifted layer {top[0].name} ({number(top[0].relative, '.3g')})"
        lines["drift"] = text
    if record.importance is not None:
        importance = record.importance
        both = importance.quadrants.both
        fraction = number(share(both, importance.numel), ".2%")
        lines["importance"] = (
            f"overlap {number(importance.overlap, '.3f')}; {number(both, ',')} ({fraction}) "
            f"parameters critical for both (top {number(importance.top, '.0%')})"
        )
    if record.interference is not None:
        interference = record.interference
        lines["interference"] = (
            f"cosine {number(interference.cosine, '+.3f')}; "
            f"{number(interference.conflicting, '.0%')} of {len(interference.pair_cosines)} "
            "batch pairs conflict"
        )
    if record.representation is not None:
        lowest = ranked(record.representation, lambda layer: layer.cka, reverse=False)
        lines["representation"] = (
            f"lowest CKA {number(lowest[0].cka, '.4f')} at {lowest[0].name}"
            if lowest
            else "CKA n/a"
        )
    if record.output is not None:
        output = record.output
        lines["output"] = (
            f"KL mean {number(output.kl_mean, '.4g')} nats (p90 "
            f"{number(output.kl_p90, '.4g')}); entropy change "
            f"{number(output.entropy_change, '+.4g')} nats"
        )
    return lines


def diagnose_table(record: DiagnoseRecord) -> str:
    """A short plain-text summary: one line per diagnostic with its headline figures, then the
    diagnostics not computed with the reason."""
    width = max(len(n) for n in SECTIONS) + 1
    headlines = _headlines(record)
    lines = [f"{name + ':':<{width}} {headlines[name]}" for name in SECTIONS if name in headlines]
    lines += [
        f"{name + ':':<{width}} not computed: {reason}"
        for name, reason in not_computed(record).items()
    ]
    return "\n".join(lines)
