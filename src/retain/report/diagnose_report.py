"""The report of ``retain diagnose``: a folder with ``results.json``, ``plots/*.png`` and one
self-contained ``report.html``, and a short terminal summary.

Input is the diagnosis record (:class:`~retain.records.diagnose.DiagnoseRecord`, format
``retain.diagnose/1``, from :func:`retain.experiment.diagnose.run_diagnose`): ``base``,
``tuned``, ``settings`` and one section per diagnostic (``drift``, ``importance``,
``interference``, ``representation``, ``output``), each None when it was skipped (``skipped``
says why) or not requested. The page has a header, one section per computed diagnostic (its
figures, a caption with the formula and units, compact tables) and the list of what was not
computed. Like the run reports it is one file: CSS inline, PNGs as base64 data URIs, no URL, no
JavaScript, every string HTML-escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from retain.atomic_files import write_bytes, write_text
from retain.errors import RetainError
from retain.records.diagnose import (
    DiagnoseRecord,
    FisherImportance,
    GradientInterference,
    GroupDrift,
    ParameterDrift,
    Quadrants,
)
from retain.records.parts import CkaLayer, ModelInfo, OutputShift, TokenShift
from retain.report.diagnose_plots import diagnose_figures, token_label
from retain.report.html_page import escape, figure_html, html_table, number, page
from retain.report.write import png_bytes

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
_Row = TypeVar("_Row")


def _ranked(rows: Iterable[_Row], key: Callable[[_Row], float], reverse: bool) -> list[_Row]:
    """``rows`` sorted by ``key`` (descending when ``reverse``), first :data:`_TOP`; rows where
    it is undefined (``NaN``) are left out."""
    defined = [r for r in rows if math.isfinite(key(r))]
    return sorted(defined, key=key, reverse=reverse)[:_TOP]


def _drift_rows(groups: Iterable[GroupDrift]) -> list[list[str]]:
    return [
        [
            escape(g.name),
            number(g.numel, ","),
            number(g.relative, ".3g"),
            number(g.rms, ".3g"),
            number(g.delta_norm, ".4g"),
            number(g.base_norm, ".4g"),
        ]
        for g in groups
    ]


def _drift_tables(drift: ParameterDrift) -> str:
    header = ["group", "parameters", "relative drift", "RMS change", "||θ − θ*||", "||θ*||"]
    parts = [html_table(header, _drift_rows([drift.total]))]
    for title, groups in (("layers", drift.layers), ("modules", drift.modules)):
        top = _ranked(groups, lambda g: g.relative, reverse=True)
        if top:
            parts.append(f"<h3>Top {len(top)} {title} by relative drift</h3>")
            parts.append(html_table(header, _drift_rows(top)))
    if drift.excluded:
        rows = [[escape(n), f'<td class="l">{escape(r)}</td>'] for n, r in drift.excluded.items()]
        parts.append("<h3>Not compared</h3>" + html_table(["parameter", "reason"], rows))
    return "".join(parts)


def _quadrants(counts: Quadrants) -> list[tuple[str, int]]:
    """Each quadrant's description and count, the conflict first."""
    return [
        ("critical for both (the conflict)", counts.both),
        ("critical for the prior capability only", counts.old_only),
        ("critical for the new task only", counts.new_only),
        ("critical for neither", counts.neither),
    ]


def _share(count: int, total: int) -> float:
    """``count / total``, ``NaN`` when ``total`` is 0."""
    return count / total if total > 0 else math.nan


def _importance_tables(importance: FisherImportance) -> str:
    total = importance.numel
    rows = [
        [escape(text), number(count, ","), number(_share(count, total), ".2%")]
        for text, count in _quadrants(importance.quadrants)
    ]
    parts = [html_table(["quadrant", "parameters", "share"], rows)]
    facts = [
        ["critical fraction per capability (top)", number(importance.top, ".1%")],
        ["threshold F_old", number(importance.thresholds.old, ".3e")],
        ["threshold F_new", number(importance.thresholds.new, ".3e")],
        ["overlap of the two Fishers (whole model)", number(importance.overlap, ".4f")],
        ["parameters compared", number(total, ",")],
        ["sampled for the scatter plot", number(len(importance.scatter.old), ",")],
    ]
    parts.append(html_table(["figure", "value"], facts))
    top = _ranked(importance.layers, lambda r: r.old_share, reverse=True)
    if top:
        header = ["layer", "old share", "new share", "overlap", "critical for both"]
        layer_rows = [
            [
                escape(r.name),
                number(r.old_share, ".2%"),
                number(r.new_share, ".2%"),
                number(r.overlap, ".3f"),
                number(None if r.quadrants is None else r.quadrants.both, ","),
            ]
            for r in top
        ]
        parts.append(f"<h3>Top {len(top)} layers by share of the prior capability's Fisher</h3>")
        parts.append(html_table(header, layer_rows))
    return "".join(parts)


def _interference_tables(interference: GradientInterference) -> str:
    pairs = interference.pair_cosines
    facts = [
        ["overall cosine of the mean gradients", number(interference.cosine, "+.4f")],
        [
            f"conflicting pairs (cosine &lt; 0) of {len(pairs)}",
            number(interference.conflicting, ".0%"),
        ],
        ["cosine per pair", escape(", ".join(number(c, "+.3f") for c in pairs))],
    ]
    parts = [html_table(["figure", "value"], facts)]
    # A layer without a conflicting fraction (an older file) shows n/a.
    conflicting = {**dict.fromkeys(interference.layers, math.nan), **interference.layer_conflicting}
    lowest = _ranked(interference.layers.items(), lambda layer: layer[1], reverse=False)
    if lowest:
        rows = [
            [
                escape(name),
                number(cosine, "+.4f"),
                number(conflicting[name], ".0%"),
            ]
            for name, cosine in lowest
        ]
        parts.append(f"<h3>The {len(lowest)} layers with the lowest cosine</h3>")
        parts.append(html_table(["layer", "cosine", "conflicting pairs"], rows))
    return "".join(parts)


def _representation_table(layers: Sequence[CkaLayer]) -> str:
    rows = [
        [
            number(r.index, "d"),
            escape(r.name),
            number(r.cka, ".4f"),
            number(max(0.0, 1.0 - r.cka) if math.isfinite(r.cka) else None, ".4f"),
        ]
        for r in layers
    ]
    return html_table(["index", "layer", "CKA", "1 − CKA"], rows)


def _token_cells(row: TokenShift | None) -> list[str]:
    if row is None:
        return ["", "", "", ""]
    return [
        f'<td class="l"><code>{escape(token_label(row.token))}</code></td>',
        number(row.change, "+.2e"),
        number(row.base, ".2e"),
        number(row.tuned, ".2e"),
    ]


def _output_tables(output: OutputShift) -> str:
    facts = [
        ["token positions compared", number(output.positions, ",")],
        *[
            [f"KL(base || tuned) {label}, nats", number(value, ".4g")]
            for label, value in (
                ("mean", output.kl_mean),
                ("median", output.kl_median),
                ("90th percentile", output.kl_p90),
                ("max", output.kl_max),
            )
        ],
        ["entropy of base, nats", number(output.entropy_base, ".4g")],
        ["entropy of tuned, nats", number(output.entropy_tuned, ".4g")],
        ["entropy change (tuned − base), nats", number(output.entropy_change, "+.4g")],
    ]
    parts = [html_table(["figure", "value"], facts)]
    gained, lost = output.gained, output.lost
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


def _tables(record: DiagnoseRecord) -> dict[str, str]:
    """The tables of each computed diagnostic, by section name."""
    tables: dict[str, str] = {}
    if record.drift is not None:
        tables["drift"] = _drift_tables(record.drift)
    if record.importance is not None:
        tables["importance"] = _importance_tables(record.importance)
    if record.interference is not None:
        tables["interference"] = _interference_tables(record.interference)
    if record.representation is not None:
        tables["representation"] = _representation_table(record.representation)
    if record.output is not None:
        tables["output"] = _output_tables(record.output)
    return tables


def _computed(record: DiagnoseRecord) -> list[str]:
    """The diagnostics with results, in :data:`SECTIONS` order."""
    sections = {
        "drift": record.drift,
        "importance": record.importance,
        "interference": record.interference,
        "representation": record.representation,
        "output": record.output,
    }
    return [name for name in SECTIONS if sections[name] is not None]


def _model(info: ModelInfo) -> str:
    return f"{info.name} ({info.class_}, {info.parameters:,} parameters, {info.origin})"


def _title(record: DiagnoseRecord) -> str:
    return f"retain diagnose: {record.base.name} → {record.tuned.name}"


def _header(record: DiagnoseRecord) -> str:
    meta = [
        ("base", _model(record.base)),
        ("tuned", _model(record.tuned)),
        ("settings", ", ".join(f"{k}={v}" for k, v in record.settings.model_dump().items())),
        ("seconds", number(record.seconds, ".1f")),
        ("warnings", "; ".join(record.warnings)),
        ("created", record.created),
        ("retain version", record.retain_version),
    ]
    rows = "".join(
        f'<tr><th class="l">{escape(k)}</th><td class="l">{escape(v)}</td></tr>'
        for k, v in meta
        if v != ""
    )
    return f'<h1>{escape(_title(record))}</h1><table class="meta">{rows}</table>'


def _not_computed(record: DiagnoseRecord) -> dict[str, str]:
    """``{diagnostic: reason}`` for every diagnostic without results, ``skipped`` first."""
    reasons = dict(record.skipped)
    computed = _computed(record)
    for name in SECTIONS:
        if name not in computed and name not in reasons:
            reasons[name] = "not requested"
    return reasons


def diagnose_html(record: DiagnoseRecord, images: Mapping[str, bytes]) -> str:
    """The page of a diagnosis; ``images`` maps figure names to PNG bytes (absent: no figure)."""
    body = [_header(record)]
    tables = _tables(record)
    for name, (title, figures) in SECTIONS.items():
        if name not in tables:
            continue
        body.append(f'<h2 id="{escape(name)}">{escape(title)}</h2>')
        body += [figure_html(f, images[f], DIAGNOSE_CAPTIONS[f]) for f in figures if f in images]
        body.append(tables[name])
    skipped = _not_computed(record)
    if skipped:
        rows = [[escape(n), f'<td class="l">{escape(r)}</td>'] for n, r in skipped.items()]
        body.append("<h2>Not computed</h2>" + html_table(["diagnostic", "reason"], rows))
    return page(_title(record), "\n".join(body))


def _as_record(results: DiagnoseRecord | Mapping[str, Any] | str | Path) -> DiagnoseRecord:
    """``results`` as a record: a record as it is, a ``results.json`` path read with
    :meth:`DiagnoseRecord.load`, a dictionary (its parsed JSON) checked by
    :meth:`DiagnoseRecord.from_json`."""
    if isinstance(results, DiagnoseRecord):
        return results
    if isinstance(results, (str, Path)):
        return DiagnoseRecord.load(results)
    kind = results["kind"] if isinstance(results, Mapping) and "kind" in results else None
    if kind != "diagnose":
        raise RetainError(
            f"write_diagnose_report got results of kind {kind!r}; pass the record of "
            "run_diagnose (kind 'diagnose') or its results.json"
        )
    return DiagnoseRecord.from_json(dict(results), source="diagnose results")


def write_diagnose_report(
    folder: Path, results: DiagnoseRecord | Mapping[str, Any] | str | Path
) -> None:
    """Write ``folder/results.json`` (strict JSON), ``folder/plots/<figure>.png`` and
    ``folder/report.html`` (:func:`diagnose_html`), each file atomically.

    ``results`` is the record of :func:`~retain.experiment.diagnose.run_diagnose`, the path of a
    ``results.json`` it wrote (read with :meth:`DiagnoseRecord.load`) or that file's parsed
    JSON; anything else of another kind is a RetainError.
    """
    record = _as_record(results)
    folder = Path(folder)
    plots = folder / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    record.write(folder / "results.json")
    images = {}
    for name, figure in diagnose_figures(record).items():
        images[name] = png_bytes(figure)
        write_bytes(plots / f"{name}.png", images[name])
    write_text(folder / "report.html", diagnose_html(record, images))


def _headlines(record: DiagnoseRecord) -> dict[str, str]:
    """One line of headline figures per computed diagnostic, by section name."""
    lines: dict[str, str] = {}
    if record.drift is not None:
        total = record.drift.total
        text = f"relative {number(total.relative, '.3g')}, RMS {number(total.rms)}"
        top = _ranked(record.drift.layers, lambda g: g.relative, reverse=True)
        if top and not top[0].relative:
            text += "; no layer moved"
        elif top:
            text += f"; most drifted layer {top[0].name} ({number(top[0].relative, '.3g')})"
        lines["drift"] = text
    if record.importance is not None:
        importance = record.importance
        both = importance.quadrants.both
        share = number(_share(both, importance.numel), ".2%")
        lines["importance"] = (
            f"overlap {number(importance.overlap, '.3f')}; {number(both, ',')} ({share}) "
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
        lowest = _ranked(record.representation, lambda layer: layer.cka, reverse=False)
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
        for name, reason in _not_computed(record).items()
    ]
    return "\n".join(lines)
