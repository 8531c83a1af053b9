"""The tables of each computed diagnostic on the diagnosis page: drift of the whole model and of
the most drifted layers and modules, Fisher importance and its quadrants, gradient interference,
CKA per layer, and the output shift's KL and most changed tokens."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from retain.records.diagnose import (
    DiagnoseRecord,
    FisherImportance,
    GradientInterference,
    GroupDrift,
    ParameterDrift,
    Quadrants,
)
from retain.records.parts import CkaLayer, OutputShift, TokenShift
from retain.report.diagnose_plots import token_label
from retain.report.diagnose_sections import ranked, share
from retain.report.html_page import escape, html_table, number

__all__ = ["diagnostic_tables"]


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
        top = ranked(groups, lambda g: g.relative, reverse=True)
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


def _importance_tables(importance: FisherImportance) -> str:
    total = importance.numel
    rows = [
        [escape(text), number(count, ","), number(share(count, total), ".2%")]
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
    top = ranked(importance.layers, lambda r: r.old_share, reverse=True)
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
    lowest = ranked(interference.layers.items(), lambda layer: layer[1], reverse=False)
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


def diagnostic_tables(record: DiagnoseRecord) -> dict[str, str]:
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
