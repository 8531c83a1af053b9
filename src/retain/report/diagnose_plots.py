"""Figures of ``retain diagnose`` results: drift, Fisher importance, interference, CKA, KL.

Every figure function takes its section of a diagnosis record
(:class:`~retain.records.diagnose.DiagnoseRecord`, from
:func:`retain.experiment.diagnose.run_diagnose`) and returns a free-standing
:class:`~matplotlib.figure.Figure` (no pyplot), or None when the section is missing (``None``:
skipped or not requested) or empty; :func:`diagnose_figures` takes the whole record.
:func:`representation_figure` and :func:`output_kl_figure` take the shared parts
(:class:`~retain.records.parts.CkaLayer`, :class:`~retain.records.parts.OutputShift`), so a run's
``shift`` section draws with them too. Layers are drawn in the order the results list them (model
order). An undefined value (``NaN``, JSON ``null``) is drawn as a gap or a zero-height bar, never
dropped, so every layer keeps its place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from numpy.typing import NDArray

from retain.records.diagnose import (
    DiagnoseRecord,
    FisherImportance,
    GradientInterference,
    ParameterDrift,
)
from retain.records.parts import CkaLayer, OutputShift, TokenShift
from retain.report.figure_parts import floats, fmt, new_figure, short

__all__ = [
    "DIAGNOSE_FIGURES",
    "TOP_TOKENS",
    "diagnose_figures",
    "drift_figure",
    "importance_layers_figure",
    "importance_scatter_figure",
    "interference_figure",
    "output_kl_figure",
    "representation_figure",
    "token_label",
]

#: The names of :func:`diagnose_figures`, in report order.
DIAGNOSE_FIGURES = (
    "drift",
    "importance_layers",
    "importance_scatter",
    "interference",
    "representation",
    "output_kl",
)
#: Tokens per side (gained, lost) in the bar panel of :func:`output_kl_figure`.
TOP_TOKENS = 10
_POSITIVE, _NEGATIVE = "tab:blue", "tab:red"
_REFERENCE: dict[str, Any] = {"color": "black", "linestyle": "--", "linewidth": 1.0}


def token_label(token: str) -> str:
    r"""A token as its Python ``repr``: quoted, so leading spaces show, with whitespace and
    control characters escaped (a newline shows as ``'\n'``).

    >>> token_label(" the"), token_label("\n")
    ("' the'", "'\\n'")
    """
    return repr(str(token))


def _drawable(text: str) -> str:
    """``text`` with the characters the default font lacks (CJK, say) written as ``\\u`` escapes,
    so a figure never draws empty boxes or warns about missing glyphs."""
    font = font_manager.get_font(font_manager.findfont(font_manager.FontProperties()))
    return "".join(c if font.get_char_index(ord(c)) else ascii(c)[1:-1] for c in text)


def _layer_axis(ax: Axes, names: Sequence[str], rotate: bool = True) -> None:
    """Layer names as x ticks (cut to 24 characters), smaller when there are many."""
    size = 8 if len(names) <= 16 else 6.5 if len(names) <= 40 else 5
    labels = [short(n, 24) for n in names]
    ax.set_xticks(range(len(names)), labels=labels, rotation=90 if rotate else 0, fontsize=size)
    ax.set_xlim(-0.7, len(names) - 0.3)


def _width(count: int) -> float:
    """Figure width (inches) for ``count`` bars: about 0.28 inch each, 8 to 24 inches."""
    return float(min(24.0, max(8.0, 0.28 * count + 3.0)))


def _signed_colors(values: NDArray[np.float64]) -> list[str]:
    return [_NEGATIVE if v < 0 else _POSITIVE for v in np.nan_to_num(values)]


def drift_figure(drift: ParameterDrift | None) -> Figure | None:
    """Per-layer relative drift ``||θ - θ*||₂ / ||θ*||₂`` (top, bars, the whole model's as a
    dashed line) and per-layer RMS change ``sqrt(mean (θ - θ*)²)`` (bottom, parameter units)."""
    if drift is None or not drift.layers:
        return None
    layers, total = drift.layers, drift.total
    names = [layer.name for layer in layers]
    fig = new_figure(_width(len(names)), 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for ax, values, whole, label in (
        (top, [g.relative for g in layers], total.relative, "relative drift ||Δθ|| / ||θ*||"),
        (bottom, [g.rms for g in layers], total.rms, "RMS change per parameter"),
    ):
        ax.bar(range(len(names)), np.nan_to_num(floats(values)), color="tab:purple")
        if math.isfinite(whole):
            ax.axhline(whole, label=f"whole model {fmt(whole)}", **_REFERENCE)
            ax.legend(fontsize=8, loc="upper right")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    _layer_axis(bottom, names)
    top.set_title(
        f"Parameter drift per layer (whole model: relative {fmt(total.relative)}, "
        f"RMS {fmt(total.rms)})"
    )
    return fig


def importance_layers_figure(importance: FisherImportance | None) -> Figure | None:
    """Per-layer share of the Fisher mass ``Σ_layer F / Σ_all F``, prior capability (old) and new
    task side by side (top), and per-layer overlap ``1 - ½ Σ (√F̂_old - √F̂_new)²`` (bottom)."""
    if importance is None or not importance.layers:
        return None
    layers = importance.layers
    names = [layer.name for layer in layers]
    x = np.arange(len(names))
    fig = new_figure(_width(int(1.5 * len(names))), 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for j, (values, label, color) in enumerate(
        (
            ([layer.old_share for layer in layers], "prior capability (old)", "tab:blue"),
            ([layer.new_share for layer in layers], "new task", "tab:orange"),
        )
    ):
        top.bar(x + (j - 0.5) * 0.4, np.nan_to_num(floats(values)), 0.4, color=color, label=label)
    top.yaxis.set_major_formatter(PercentFormatter(1.0))
    top.set_ylabel("share of the Fisher mass")
    top.legend(fontsize=8, loc="upper right")
    overall = importance.overlap
    top.set_title(
        f"Fisher importance per layer (overall overlap {fmt(overall, '.3f')}; critical = top "
        f"{fmt(importance.top, '.0%')} per capability)"
    )
    bottom.bar(x, np.nan_to_num(floats([layer.overlap for layer in layers])), color="0.45")
    if math.isfinite(overall):
        bottom.axhline(overall, label=f"whole model {fmt(overall, '.3f')}", **_REFERENCE)
        bottom.legend(fontsize=8, loc="upper right")
    bottom.set_ylim(0.0, 1.05)
    bottom.set_ylabel("overlap of old and new Fisher")
    for ax in (top, bottom):
        ax.grid(alpha=0.3, axis="y")
    _layer_axis(bottom, names)
    return fig


def _quadrant_text(ax: Axes, x: float, y: float, label: str, count: int, total: float) -> None:
    share = f" ({count / total:.1%})" if total > 0 else ""
    box = {"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"}
    ax.text(
        x,
        y,
        f"{label}\n{count:,}{share}",
        ha="center",
        va="center",
        fontsize=8.5,
        bbox=box,
        zorder=5,
    )


def importance_scatter_figure(importance: FisherImportance | None) -> Figure | None:
    """Log-log scatter of the sampled ``(F_old, F_new)`` pairs, the two ``(1 - top)`` quantile
    thresholds (dashed) and the quadrant counts over ALL parameters (not just the sample).

    Fisher values ``<= 0`` cannot sit on a log axis: they are drawn at a floor (a tenth of the
    smallest positive value shown), which the axis labels state.
    """
    if importance is None:
        return None
    old, new = floats(importance.scatter.old), floats(importance.scatter.new)
    if not old.size or old.size != new.size:
        return None
    t_old, t_new = importance.thresholds.old, importance.thresholds.new
    candidates = np.concatenate([old, new, [t_old, t_new]])
    positive = candidates[np.isfinite(candidates) & (candidates > 0)]
    floor = float(positive.min()) / 10 if positive.size else 1e-12
    top_value = float(positive.max()) if positive.size else 1.0
    xs, ys = (np.where(np.isfinite(v) & (v > floor), v, floor) for v in (old, new))
    t_old, t_new = (t if math.isfinite(t) and t > floor else floor for t in (t_old, t_new))
    fig = new_figure(7.5, 6.5)
    ax = fig.add_subplot()
    ax.scatter(xs, ys, s=3, alpha=0.25, color="tab:blue", linewidths=0, rasterized=True)
    lo, hi = floor / 2, top_value * 3
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.axvline(t_old, **_REFERENCE)
    ax.axhline(t_new, **_REFERENCE)
    counts = importance.quadrants
    total = float(
        importance.numel or counts.old_only + counts.new_only + counts.both + counts.neither
    )
    left, right = math.sqrt(lo * t_old), math.sqrt(t_old * hi)
    low, high = math.sqrt(lo * t_new), math.sqrt(t_new * hi)
    for x, y, count, label in (
        (right, low, counts.old_only, "critical for old only"),
        (left, high, counts.new_only, "critical for new only"),
        (right, high, counts.both, "critical for both"),
        (left, low, counts.neither, "neither"),
    ):
        _quadrant_text(ax, x, y, label, count, total)
    ax.set_xlabel("Fisher, prior capability F_old")
    clipped = [int((~(np.isfinite(v) & (v > floor))).sum()) for v in (old, new)]
    if any(clipped):
        note = f"{clipped[0]:,} F_old and {clipped[1]:,} F_new values ≤ 0 drawn at {floor:.1e}"
        ax.text(0.01, 0.01, note, transform=ax.transAxes, fontsize=7.5, color="0.3")
    ax.set_ylabel("Fisher, new task F_new")
    ax.set_title(
        f"Fisher importance of {len(old):,} sampled parameters; counts over all "
        f"{int(total):,}\ndashed: top-{fmt(importance.top, '.0%')} thresholds "
        f"(old {t_old:.2e}, new {t_new:.2e})",
        fontsize=10,
    )
    ax.grid(alpha=0.3, which="major")
    return fig


def interference_figure(interference: GradientInterference | None) -> Figure | None:
    """Cosine of the mean new-task and prior-capability gradients per layer (left; negative =
    conflicting, red) and the overall cosine of each (new batch, prior batch) pair (right)."""
    if interference is None:
        return None
    names = list(interference.layers)
    pairs = floats(interference.pair_cosines)
    if not names and not pairs.size:
        return None
    cosines = floats(list(interference.layers.values()))
    fig = new_figure(_width(len(names) + len(pairs)), 5.0)
    left, right = fig.subplots(1, 2, width_ratios=[4, 1])
    left.bar(range(len(names)), np.nan_to_num(cosines), color=_signed_colors(cosines))
    _layer_axis(left, names)
    left.set_ylabel("cosine(g_new, g_old)")
    left.set_title(
        f"Gradient interference per layer (overall cosine {fmt(interference.cosine, '+.3f')}"
        f", conflicting pairs {fmt(interference.conflicting, '.0%')})"
    )
    right.bar(range(1, len(pairs) + 1), np.nan_to_num(pairs), color=_signed_colors(pairs))
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("mini-batch pair")
    right.set_title("Per pair")
    for ax in (left, right):
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.grid(alpha=0.3, axis="y")
    return fig


def representation_figure(
    layers: Sequence[CkaLayer] | None, title: str | None = None
) -> Figure | None:
    """Linear CKA of base and tuned hidden states per layer (index 0 = embeddings, ``k + 1`` =
    block ``k``), y from the lowest value (or 0.9) to 1; ``title`` replaces the default one.
    None when ``layers`` is None or empty."""
    if not layers:
        return None
    x = floats([layer.index for layer in layers])
    cka = floats([layer.cka for layer in layers])
    fig = new_figure(max(6.5, min(16.0, 0.3 * len(layers) + 4.0)), 4.2)
    ax = fig.add_subplot()
    ax.plot(x, cka, marker="o", markersize=4, color="tab:green")
    finite = cka[np.isfinite(cka)]
    low = min(0.9, float(finite.min())) if finite.size else 0.0
    ax.set_ylim(low - 0.02 * (1.0 - low + 1e-3), 1.0 + 0.01 * (1.0 - low + 1e-3))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("hidden state (0 = embeddings, k + 1 = output of block k)")
    ax.set_ylabel("linear CKA (1 = same representation)")
    worst = int(np.nanargmin(cka)) if finite.size else None
    detail = "" if worst is None else f"\nlowest {cka[worst]:.3f} at {layers[worst].name}"
    ax.set_title(title or f"Representational similarity of base and tuned per layer{detail}")
    ax.grid(alpha=0.3)
    return fig


def _token_bars(ax: Axes, gained: Sequence[TokenShift], lost: Sequence[TokenShift]) -> None:
    rows = [*gained[:TOP_TOKENS], *lost[:TOP_TOKENS][::-1]]
    changes = floats([row.change for row in rows])
    ax.barh(range(len(rows)), np.nan_to_num(changes), color=_signed_colors(changes))
    labels = [short(_drawable(token_label(row.token)), 20) for row in rows]
    ax.set_yticks(range(len(rows)), labels=labels, fontsize=7.5, parse_math=False)
    ax.invert_yaxis()
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.set_xlabel("mean probability change Δ (tuned - base)")
    ax.set_title(f"Top {min(len(gained), TOP_TOKENS)} gained / lost tokens")
    ax.grid(alpha=0.3, axis="x")


def output_kl_figure(output: OutputShift | None, title: str | None = None) -> Figure | None:
    """Histogram of the per-position next-token ``KL(base || tuned)`` sample in nats (mean: red
    line, median: dotted) and, when present, the tokens whose mean probability rose (blue) or fell
    (red) the most; ``title`` replaces the default one. None when ``output`` is None or has
    neither a KL sample nor tokens."""
    if output is None:
        return None
    sample = floats(output.kl_sample)
    sample = sample[np.isfinite(sample)]
    gained, lost = output.gained, output.lost
    if not sample.size and not gained and not lost:
        return None
    tokens = bool(gained or lost)
    fig = new_figure(12.0 if tokens else 7.0, 4.8)
    axes = fig.subplots(1, 2, width_ratios=[3, 2]) if tokens else [fig.add_subplot()]
    ax = axes[0]
    if sample.size:
        ax.hist(sample, bins=40, color="tab:blue", alpha=0.8)
    mean, median = output.kl_mean, output.kl_median
    if math.isfinite(mean):
        ax.axvline(mean, color="tab:red", linewidth=1.5, label=f"mean {fmt(mean)} nats")
    if math.isfinite(median):
        ax.axvline(median, color="black", linestyle=":", label=f"median {fmt(median)}")
    ax.set_xlabel("KL(base || tuned) per token position, nats")
    ax.set_ylabel("positions")
    ax.set_title(
        title
        or f"Next-token KL over {len(sample):,} positions (entropy change "
        f"{fmt(output.entropy_change, '+.3f')} nats)"
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if tokens:
        _token_bars(axes[1], gained, lost)
    return fig


def diagnose_figures(record: DiagnoseRecord) -> dict[str, Figure]:
    """Every figure the diagnosis has data for, by name in :data:`DIAGNOSE_FIGURES` order."""
    figures = {
        "drift": drift_figure(record.drift),
        "importance_layers": importance_layers_figure(record.importance),
        "importance_scatter": importance_scatter_figure(record.importance),
        "interference": interference_figure(record.interference),
        "representation": representation_figure(record.representation),
        "output_kl": output_kl_figure(record.output),
    }
    return {name: fig for name in DIAGNOSE_FIGURES if (fig := figures[name]) is not None}
