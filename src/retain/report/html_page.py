"""The page helpers every HTML report is built from: escaping, numbers, tables, embedded figures
and the whole document with its inline style sheet.

A report is ONE file: CSS inline, figures embedded as ``data:image/png;base64`` URIs, no external
URL and no JavaScript, so it opens offline, from an e-mail attachment or an artifact store. Every
string that comes from a config or a result goes through :func:`escape`. Used by the run and
comparison reports (:mod:`retain.report.html`, :mod:`retain.report.comparison_html`), the
diagnosis (:mod:`retain.report.diagnose_report`) and the audit (:mod:`retain.report.audit_html`).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from retain.records.parts import Score

__all__ = [
    "CSS",
    "escape",
    "figure_html",
    "figures_section",
    "html_table",
    "number",
    "page",
    "score_label",
]

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


def figures_section(
    images: Mapping[str, bytes], order: Sequence[str], captions: Mapping[str, str]
) -> str:
    """A ``Figures`` heading and each image as :func:`figure_html`, those named in ``order``
    first; a figure's caption is ``captions[name]`` (its name when it has none). Empty when
    there are no images."""
    names = [n for n in order if n in images] + [n for n in images if n not in order]
    parts = [figure_html(n, images[n], captions.get(n, n)) for n in names]
    return "<h2>Figures</h2>" + "".join(parts) if parts else ""


def page(title: str, body: str) -> str:
    """A whole HTML document: ``title`` (escaped), the inline :data:`CSS` and ``body`` (HTML)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def score_label(score: Score) -> str:
    """``name (higher is better)`` of a run's score."""
    direction = "higher" if score.higher_is_better else "lower"
    return f"{score.name} ({direction} is better)"
