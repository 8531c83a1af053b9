"""The report of ``retain diagnose``: a folder with ``results.json``, ``plots/*.png`` and one
self-contained ``report.html``, and a short terminal summary.

Input is the diagnosis record (:class:`~retain.records.diagnose.DiagnoseRecord`, format
``retain.diagnose/1``, from :func:`retain.experiment.diagnose.run_diagnose`): ``base``,
``tuned``, ``settings`` and one section per diagnostic (``drift``, ``importance``,
``interference``, ``representation``, ``output``), each None when it was skipped (``skipped``
says why) or not requested. The page has a header, one section per computed diagnostic (its
figures, a caption with the formula and units, compact tables) and the list of what was not
computed. Like the run reports it is one file: CSS inline, PNGs as base64 data URIs, no URL, no
JavaScript, every string HTML-escaped. The tables are :mod:`retain.report.diagnose_tables`, the
terminal summary :mod:`retain.report.diagnose_summary`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from retain.atomic_files import write_bytes, write_text
from retain.errors import RetainError
from retain.records.diagnose import DiagnoseRecord
from retain.records.parts import ModelInfo
from retain.report.diagnose_plots import diagnose_figures
from retain.report.diagnose_sections import SECTIONS, not_computed
from retain.report.diagnose_tables import diagnostic_tables
from retain.report.html_page import escape, figure_html, html_table, number, page
from retain.report.write import png_bytes

__all__ = [
    "DIAGNOSE_CAPTIONS",
    "SECTIONS",
    "diagnose_html",
    "write_diagnose_report",
]

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


def diagnose_html(record: DiagnoseRecord, images: Mapping[str, bytes]) -> str:
    """The page of a diagnosis; ``images`` maps figure names to PNG bytes (absent: no figure)."""
    body = [_header(record)]
    tables = diagnostic_tables(record)
    for name, (title, figures) in SECTIONS.items():
        if name not in tables:
            continue
        body.append(f'<h2 id="{escape(name)}">{escape(title)}</h2>')
        body += [figure_html(f, images[f], DIAGNOSE_CAPTIONS[f]) for f in figures if f in images]
        body.append(tables[name])
    skipped = not_computed(record)
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
