"""The report of ``retain diagnose``: a folder with ``results.json``, ``plots/*.png`` and one
self-contained ``report.html``, and a short terminal summary.

Input is the diagnosis dictionary (format ``retain.diagnose/1``, from
:func:`retain.experiment.diagnose.run_diagnose`): ``base``, ``tuned``, ``settings`` and one
section per diagnostic (``drift``, ``importance``, ``interference``, ``representation``,
``output``), each None when it was skipped (``skipped`` says why) or not requested. The page has
a header, one section per computed diagnostic (its figures, a caption with the formula and units,
compact tables) and the list of what was not computed. Like the run reports it is one file: CSS
inline, PNGs as base64 data URIs, no URL, no JavaScript, every string HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from retain.atomic_files import write_bytes, write_text
from retain.errors import RetainError
from retain.report.diagnose_plots import diagnose_figures, token_label
from retain.report.html import escape, figure_html, html_table, number, page
from retain.report.write import png_bytes
from retain.schema import write_record

__all__ = [
    "DIAGNOSE_CAPTIONS",
    "SECTIONS",
    "diagnose_html",
    "diagnose_table",
    "write_diagnose_report",
]

#: Each diagnostic's section: its title and the figures shown in it, in report order.
SECTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "drift": ("Parameter drift", ("drift",)),
    "importance": ("Fisher importance", ("importance_layers", "importance_scatter")),
    "interference": ("Gradient interference", ("interference",)),
    "representation": ("Representational shift", ("representation",)),
    "output": ("Output-distribution shift", ("output_kl",)),
}
#: What each figure shows (formula and units), by the names of
#: :data:`~retain.report.diagnose_plots.DIAGNOSE_FIGURES`.
DIAGNOSE_CAPTIONS = {
    "drift": "Top: relative drift of each layer, the norm of the change of all its parameters "
    "divided by the norm of their base values, ||θ − θ*||₂ / ||θ*||₂ (dimensionless; 0.01 = the "
    "layer moved by 1 % of its size); dashed: the whole model. Bottom: RMS change per parameter, "
    "sqrt(Σ (θ − θ*)² / n), in the parameters' own units.",
    "importance_layers": "Top: each layer's share of the total diagonal Fisher information Σ F "
    "(squared gradients of the log-likelihood, summed over the layer's parameters, divided by the "
    "sum over the model), for the prior capability (general text, old) and the new task. Bottom: "
    "overlap 1 − ½ Σ (√F̂_old − √F̂_new)² of the two Fishers normalised to unit sum (1 = "
    "proportional, 0 = disjoint); dashed: the whole model.",
    "importance_scatter": "Fisher value of a random sample of parameters for the prior "
    "capability (x) and the new task (y), log-log; values ≤ 0 are drawn at a floor. Dashed: the "
    "thresholds above which a parameter counts as critical for that capability (its top-fraction "
    "quantile). Boxes: how many of ALL parameters fall in each quadrant; 'both' are the "
    "parameters the new task needs to move that the old capability relies on.",
    "interference": "Left: cosine <g_new, g_old> / (||g_new|| ||g_old||) of the mean gradient of "
    "the new task's loss and of the prior capability's loss, per layer, at the base weights "
    "(dimensionless, −1 to 1). Negative (red): a step on the new task raises the prior loss to "
    "first order. Right: the overall cosine of each (new batch, prior batch) pair.",
    "representation": "Linear CKA ||Yᵀ X||²_F / (||Xᵀ X||_F ||Yᵀ Y||_F) between the base (X) and "
    "tuned (Y) hidden states of the same tokens of general text, each centred, per layer (0 = "
    "embeddings, k + 1 = output of block k, numbered from 0 as in the parameter names). The "
    "first token of each sequence is left out: it is an attention sink whose huge activations "
    "would dominate the score. 1 = the same representation up to rotation and scale; lower = "
    "the layer's representation changed more.",
    "output_kl": "Left: histogram of the next-token KL(p_base || q_tuned) = Σ_v p_v (log p_v − "
    "log q_v) at each token position of general text, in nats (red: mean, dotted: median). "
    "Right: the tokens whose mean predicted probability rose (blue) or fell (red) the most, "
    "Δ_v = mean over positions of (q_v − p_v).",
}
_TOP = 10  # rows of the top-layers and top-modules tables


def _ranked(rows: Sequence[Mapping[str, Any]], key: str, reverse: bool) -> list[Mapping[str, Any]]:
    """``rows`` with a numeric ``key`` sorted by it (descending when ``reverse``), first
    :data:`_TOP`; rows where it is undefined are left out."""
    defined = [r for r in rows if isinstance(r.get(key), (int, float))]
    return sorted(defined, key=lambda r: float(r[key]), reverse=reverse)[:_TOP]


def _drift_rows(groups: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [
            escape(g.get("name", "?")),
            number(g.get("numel"), ","),
            number(g.get("relative"), ".3g"),
            number(g.get("rms"), ".3g"),
            number(g.get("delta_norm"), ".4g"),
            number(g.get("base_norm"), ".4g"),
        ]
        for g in groups
    ]


def _drift_tables(drift: Mapping[str, Any]) -> str:
    header = ["group", "parameters", "relative drift", "RMS change", "||θ − θ*||", "||θ*||"]
    parts = [html_table(header, _drift_rows([drift.get("total") or {"name": "total"}]))]
    for title, key in (("layers", "layers"), ("modules", "modules")):
        top = _ranked(list(drift.get(key) or []), "relative", reverse=True)
        if top:
            parts.append(f"<h3>Top {len(top)} {title} by relative drift</h3>")
            parts.append(html_table(header, _drift_rows(top)))
    excluded = drift.get("excluded") or {}
    if excluded:
        rows = [[escape(n), f'<td class="l">{escape(r)}</td>'] for n, r in excluded.items()]
        parts.append("<h3>Not compared</h3>" + html_table(["parameter", "reason"], rows))
    return "".join(parts)


_QUADRANTS = {
    "both": "critical for both (the conflict)",
    "old_only": "critical for the prior capability only",
    "new_only": "critical for the new task only",
    "neither": "critical for neither",
}


def _share(count: Any, total: Any) -> float | None:
    """``count / total`` of two counts, None when either is missing or ``total`` is 0."""
    numbers = all(isinstance(v, int) and not isinstance(v, bool) for v in (count, total))
    return count / total if numbers and total > 0 else None


def _importance_tables(importance: Mapping[str, Any]) -> str:
    counts, total = importance.get("quadrants") or {}, importance.get("numel")
    rows = [
        [escape(text), number(counts.get(k), ","), number(_share(counts.get(k), total), ".2%")]
        for k, text in _QUADRANTS.items()
    ]
    parts = [html_table(["quadrant", "parameters", "share"], rows)]
    thresholds = importance.get("thresholds") or {}
    scatter = importance.get("scatter") or {}
    facts = [
        ["critical fraction per capability (top)", number(importance.get("top"), ".1%")],
        ["threshold F_old", number(thresholds.get("old"), ".3e")],
        ["threshold F_new", number(thresholds.get("new"), ".3e")],
        ["overlap of the two Fishers (whole model)", number(importance.get("overlap"), ".4f")],
        ["parameters compared", number(total, ",")],
        ["sampled for the scatter plot", number(len(scatter.get("old") or []), ",")],
    ]
    parts.append(html_table(["figure", "value"], facts))
    top = _ranked(list(importance.get("layers") or []), "old_share", reverse=True)
    if top:
        header = ["layer", "old share", "new share", "overlap", "critical for both"]
        layer_rows = [
            [
                escape(r.get("name", "?")),
                number(r.get("old_share"), ".2%"),
                number(r.get("new_share"), ".2%"),
                number(r.get("overlap"), ".3f"),
                number((r.get("quadrants") or {}).get("both"), ","),
            ]
            for r in top
        ]
        parts.append(f"<h3>Top {len(top)} layers by share of the prior capability's Fisher</h3>")
        parts.append(html_table(header, layer_rows))
    return "".join(parts)


def _interference_tables(interference: Mapping[str, Any]) -> str:
    pairs = list(interference.get("pair_cosines") or [])
    facts = [
        ["overall cosine of the mean gradients", number(interference.get("cosine"), "+.4f")],
        [
            f"conflicting pairs (cosine &lt; 0) of {len(pairs)}",
            number(interference.get("conflicting"), ".0%"),
        ],
        ["cosine per pair", escape(", ".join(number(c, "+.3f") for c in pairs))],
    ]
    parts = [html_table(["figure", "value"], facts)]
    conflicting = interference.get("layer_conflicting") or {}
    layers = [{"name": k, "cosine": v} for k, v in (interference.get("layers") or {}).items()]
    lowest = _ranked(layers, "cosine", reverse=False)
    if lowest:
        rows = [
            [
                escape(r["name"]),
                number(r["cosine"], "+.4f"),
                number(conflicting.get(r["name"]), ".0%"),
            ]
            for r in lowest
        ]
        parts.append(f"<h3>The {len(lowest)} layers with the lowest cosine</h3>")
        parts.append(html_table(["layer", "cosine", "conflicting pairs"], rows))
    return "".join(parts)


def _representation_table(layers: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [
            number(r.get("index"), "d"),
            escape(r.get("name", "?")),
            number(r.get("cka"), ".4f"),
            number(
                max(0.0, 1.0 - r["cka"]) if isinstance(r.get("cka"), (int, float)) else None,
                ".4f",
            ),
        ]
        for r in layers
    ]
    return html_table(["index", "layer", "CKA", "1 − CKA"], rows)


def _token_cells(row: Mapping[str, Any] | None) -> list[str]:
    if row is None:
        return ["", "", "", ""]
    return [
        f'<td class="l"><code>{escape(token_label(str(row.get("token", "?"))))}</code></td>',
        number(row.get("change"), "+.2e"),
        number(row.get("base"), ".2e"),
        number(row.get("tuned"), ".2e"),
    ]


def _output_tables(output: Mapping[str, Any]) -> str:
    facts = [
        ["token positions compared", number(output.get("positions"), ",")],
        *[
            [f"KL(base || tuned) {label}, nats", number(output.get(key), ".4g")]
            for label, key in (
                ("mean", "kl_mean"),
                ("median", "kl_median"),
                ("90th percentile", "kl_p90"),
                ("max", "kl_max"),
            )
        ],
        ["entropy of base, nats", number(output.get("entropy_base"), ".4g")],
        ["entropy of tuned, nats", number(output.get("entropy_tuned"), ".4g")],
        ["entropy change (tuned − base), nats", number(output.get("entropy_change"), "+.4g")],
    ]
    parts = [html_table(["figure", "value"], facts)]
    gained, lost = list(output.get("gained") or []), list(output.get("lost") or [])
    count = max(len(gained), len(lost))
    if count:
        header = ["rank", "gained token", "Δ", "base", "tuned", "lost token", "Δ", "base", "tuned"]
        rows = [
            [
                str(k + 1),
                *_token_cells(gained[k] if k < len(gained) else None),
                *_token_cells(lost[k] if k < len(lost) else None),
            ]
            for k in range(count)
        ]
        parts.append("<h3>Tokens whose mean probability changed the most</h3>")
        parts.append(html_table(header, rows))
    return "".join(parts)


_TABLES: dict[str, Callable[[Any], str]] = {
    "drift": _drift_tables,
    "importance": _importance_tables,
    "interference": _interference_tables,
    "representation": _representation_table,
    "output": _output_tables,
}


def _model(info: Any) -> str:
    if not isinstance(info, Mapping):
        return str(info or "n/a")
    params = info.get("parameters")
    count = f"{params:,} parameters" if isinstance(params, int) else "parameters n/a"
    return f"{info.get('name', '?')} ({info.get('class', '?')}, {count}, {info.get('origin', '?')})"


def _name(info: Any) -> str:
    return str(info.get("name", "?")) if isinstance(info, Mapping) else str(info or "?")


def _title(results: Mapping[str, Any]) -> str:
    names = [_name(results.get(k)) for k in ("base", "tuned")]
    return f"retain diagnose: {names[0]} → {names[1]}"


def _header(results: Mapping[str, Any]) -> str:
    settings = results.get("settings") or {}
    meta = [
        ("base", _model(results.get("base"))),
        ("tuned", _model(results.get("tuned"))),
        ("settings", ", ".join(f"{k}={v}" for k, v in settings.items())),
        ("seconds", number(results.get("seconds"), ".1f")),
        ("warnings", "; ".join(str(w) for w in results.get("warnings") or [])),
        ("created", results.get("created", "")),
        ("retain version", results.get("retain_version", "")),
    ]
    rows = "".join(
        f'<tr><th class="l">{escape(k)}</th><td class="l">{escape(v)}</td></tr>'
        for k, v in meta
        if v != ""
    )
    return f'<h1>{escape(_title(results))}</h1><table class="meta">{rows}</table>'


def _not_computed(results: Mapping[str, Any]) -> dict[str, str]:
    """``{diagnostic: reason}`` for every diagnostic without results, ``skipped`` first."""
    reasons = {str(k): str(v) for k, v in (results.get("skipped") or {}).items()}
    for name in SECTIONS:
        if results.get(name) is None and name not in reasons:
            reasons[name] = "not requested"
    return reasons


def diagnose_html(results: Mapping[str, Any], images: Mapping[str, bytes]) -> str:
    """The page of a diagnosis; ``images`` maps figure names to PNG bytes (absent: no figure)."""
    body = [_header(results)]
    for name, (title, figures) in SECTIONS.items():
        section = results.get(name)
        if section is None:
            continue
        body.append(f'<h2 id="{escape(name)}">{escape(title)}</h2>')
        body += [figure_html(f, images[f], DIAGNOSE_CAPTIONS[f]) for f in figures if f in images]
        body.append(_TABLES[name](section))
    skipped = _not_computed(results)
    if skipped:
        rows = [[escape(n), f'<td class="l">{escape(r)}</td>'] for n, r in skipped.items()]
        body.append("<h2>Not computed</h2>" + html_table(["diagnostic", "reason"], rows))
    return page(_title(results), "\n".join(body))


def write_diagnose_report(folder: Path, results: dict[str, Any]) -> None:
    """Write ``folder/results.json`` (strict JSON), ``folder/plots/<figure>.png`` and
    ``folder/report.html`` (:func:`diagnose_html`), each file atomically."""
    kind = results.get("kind") if isinstance(results, Mapping) else None
    if kind != "diagnose":
        raise RetainError(
            f"write_diagnose_report got results of kind {kind!r}; pass the dictionary of "
            "run_diagnose (kind 'diagnose') or its results.json"
        )
    folder = Path(folder)
    plots = folder / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    write_record(folder / "results.json", results)
    images = {}
    for name, figure in diagnose_figures(results).items():
        images[name] = png_bytes(figure)
        write_bytes(plots / f"{name}.png", images[name])
    write_text(folder / "report.html", diagnose_html(results, images))


def _headline(name: str, section: Any) -> str:
    if name == "drift":
        total = section.get("total") or {}
        text = f"relative {number(total.get('relative'), '.3g')}, RMS {number(total.get('rms'))}"
        top = _ranked(list(section.get("layers") or []), "relative", reverse=True)
        if top and not top[0]["relative"]:
            text += "; no layer moved"
        elif top:
            text += f"; most drifted layer {top[0]['name']} ({number(top[0]['relative'], '.3g')})"
        return text
    if name == "importance":
        both = (section.get("quadrants") or {}).get("both")
        share = number(_share(both, section.get("numel")), ".2%")
        return (
            f"overlap {number(section.get('overlap'), '.3f')}; {number(both, ',')} ({share}) "
            f"parameters critical for both (top {number(section.get('top'), '.0%')})"
        )
    if name == "interference":
        pairs = len(section.get("pair_cosines") or [])
        return (
            f"cosine {number(section.get('cosine'), '+.3f')}; "
            f"{number(section.get('conflicting'), '.0%')} of {pairs} batch pairs conflict"
        )
    if name == "representation":
        lowest = _ranked(list(section), "cka", reverse=False)
        if not lowest:
            return "CKA n/a"
        return f"lowest CKA {number(lowest[0]['cka'], '.4f')} at {lowest[0].get('name', '?')}"
    return (
        f"KL mean {number(section.get('kl_mean'), '.4g')} nats (p90 "
        f"{number(section.get('kl_p90'), '.4g')}); entropy change "
        f"{number(section.get('entropy_change'), '+.4g')} nats"
    )


def diagnose_table(results: Mapping[str, Any]) -> str:
    """A short plain-text summary: one line per diagnostic with its headline figures, then the
    diagnostics not computed with the reason."""
    width = max(len(n) for n in SECTIONS) + 1
    lines = [
        f"{name + ':':<{width}} {_headline(name, results[name])}"
        for name in SECTIONS
        if results.get(name) is not None
    ]
    lines += [
        f"{name + ':':<{width}} not computed: {reason}"
        for name, reason in _not_computed(results).items()
    ]
    return "\n".join(lines)
