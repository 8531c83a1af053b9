"""The ``results.json`` of ``retain diagnose`` (format ``retain.diagnose/1``) as a typed record.

A :class:`DiagnoseRecord` holds both models, the settings and one section per diagnostic:
``drift`` (:class:`ParameterDrift`), ``importance`` (:class:`FisherImportance`),
``interference`` (:class:`GradientInterference`), ``representation`` (a list of
:class:`~retain.records.parts.CkaLayer`) and ``output``
(:class:`~retain.records.parts.OutputShift`). A section is None when it was not computed:
``skipped`` gives the reason, and a diagnostic neither skipped nor computed was not requested.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from retain.records.base import Num, Part, Record
from retain.records.parts import CkaLayer, ModelInfo, OutputShift

__all__ = [
    "DiagnoseRecord",
    "DiagnoseSettings",
    "FisherImportance",
    "FisherSample",
    "FisherThresholds",
    "GradientInterference",
    "GroupDrift",
    "LayerImportance",
    "ParameterDrift",
    "Quadrants",
]

_NAN = float("nan")


class DiagnoseSettings(Part):
    """What the diagnosis was asked to do (the options of ``retain diagnose``)."""

    data: str | None
    """The new task's dataset (registry name, file or hub name); None when not given."""
    general: str
    """The held-out general text (the prior capability)."""
    model_kind: str
    """The kind of both models, e.g. ``causal-lm`` or ``encoder``."""
    samples: int | None = None
    """Sequences of general text for CKA and KL."""
    fisher_samples: int | None = None
    """Sequences per Fisher estimate (general text and new task)."""
    batches: int | None = None
    """Mini-batch pairs for the gradient interference."""
    batch_size: int | None = None
    """Sequences per forward pass."""
    max_length: int | None = None
    """Tokens per sequence."""
    max_tokens: int | None = None
    """Token positions per layer for CKA."""
    top: float | None = None
    """Fraction of parameters counted critical per capability (dimensionless, 0 to 1)."""
    exclude: str | None = None
    """Regular expression of parameter names left out of the drift; None: none left out."""
    device: str | None = None
    """The device the models ran on, e.g. ``cpu`` or ``cuda:0``."""


class GroupDrift(Part):
    """Drift of one group of parameters (a layer, a module or the whole model) from the base
    values ``θ*`` to the tuned values ``θ``."""

    name: str
    """The layer or module name, ``total`` for every compared parameter."""
    numel: int
    """Scalars compared."""
    rms: Num
    """Root-mean-square change per scalar, ``sqrt(Σ (θ - θ*)² / n)`` (the parameters' units)."""
    relative: Num
    """``||θ - θ*||₂ / ||θ*||₂`` (dimensionless); undefined when the base norm is 0."""
    delta_norm: Num = _NAN
    """``||θ - θ*||₂`` (the parameters' units)."""
    base_norm: Num = _NAN
    """``||θ*||₂`` (the parameters' units)."""


class ParameterDrift(Part):
    """Parameter drift from base to tuned, in total, per layer and per module."""

    total: GroupDrift
    """Every compared parameter together."""
    layers: list[GroupDrift]
    """One entry per layer, in model order."""
    modules: list[GroupDrift] = []
    """One entry per module, in model order."""
    excluded: dict[str, str] = {}
    """Parameters not compared (new heads, changed shapes, matched by ``exclude``), with the
    reason."""


class Quadrants(Part):
    """Scalars counted by whether they are critical (above the ``1 - top`` quantile of their
    Fisher) for the prior capability (old), the new task (new), both or neither."""

    old_only: int
    """Scalars critical for the prior capability only."""
    new_only: int
    """Scalars critical for the new task only."""
    both: int
    """Scalars critical for both: those the new task needs to move that the old one relies on."""
    neither: int
    """Scalars critical for neither."""


class LayerImportance(Part):
    """One layer's diagonal Fisher figures for the prior capability (old) and the new task
    (new)."""

    name: str
    """The layer's name."""
    numel: int
    """Scalars in the layer."""
    old_mass: Num = _NAN
    """``Σ F_old`` over the layer (Fisher units: squared log-likelihood gradients)."""
    new_mass: Num = _NAN
    """``Σ F_new`` over the layer (Fisher units)."""
    old_share: Num = _NAN
    """The layer's share of the model's ``Σ F_old`` (dimensionless, 0 to 1)."""
    new_share: Num = _NAN
    """The layer's share of the model's ``Σ F_new`` (dimensionless, 0 to 1)."""
    old_mean: Num = _NAN
    """Mean ``F_old`` per scalar (Fisher units)."""
    new_mean: Num = _NAN
    """Mean ``F_new`` per scalar (Fisher units)."""
    overlap: Num = _NAN
    """``1 - ½ Σ (√F̂_old - √F̂_new)²`` of the layer's Fishers normalised to unit sum
    (dimensionless; 1 = proportional, 0 = disjoint); undefined when either is all zero."""
    quadrants: Quadrants | None = None
    """The layer's quadrant counts."""


class FisherThresholds(Part):
    """The ``1 - top`` quantiles of each Fisher: a scalar above it is critical."""

    old: Num = _NAN
    """Threshold of ``F_old`` (Fisher units)."""
    new: Num = _NAN
    """Threshold of ``F_new`` (Fisher units)."""


class FisherSample(Part):
    """Paired Fisher values of a random sample of scalars (for the scatter plot)."""

    old: list[Num] = []
    """``F_old`` of each sampled scalar (Fisher units)."""
    new: list[Num] = []
    """``F_new`` of the same scalars (Fisher units)."""


class FisherImportance(Part):
    """Fisher importance of the general text (old) and of the new task (new) at the base
    weights."""

    layers: list[LayerImportance]
    """One entry per layer, in model order."""
    quadrants: Quadrants
    """Quadrant counts over every scalar of the model."""
    thresholds: FisherThresholds = Field(default_factory=FisherThresholds)
    """The critical thresholds of both Fishers."""
    top: float
    """Fraction of scalars counted critical per capability (dimensionless, 0 to 1)."""
    overlap: Num
    """Whole-model overlap of the two Fishers (dimensionless, 0 to 1; see
    :attr:`LayerImportance.overlap`)."""
    numel: int
    """Scalars compared."""
    scatter: FisherSample = Field(default_factory=FisherSample)
    """A random sample of paired Fisher values."""


class GradientInterference(Part):
    """Cosines between the new task's and the general text's loss gradients at the base weights
    (dimensionless, -1 to 1; negative: a step on the new task raises the general loss to first
    order)."""

    cosine: Num
    """Cosine of the mean new-task and mean general-text gradients over the whole model."""
    layers: dict[str, Num]
    """Cosine of the mean gradients per layer, in model order."""
    pair_cosines: list[Num]
    """Whole-model cosine of each (new batch, general batch) pair."""
    conflicting: Num
    """Fraction of pairs with a negative cosine (0 to 1)."""
    layer_conflicting: dict[str, Num] = {}
    """Per layer, the fraction of pairs whose layer cosine is negative (0 to 1)."""


class DiagnoseRecord(Record):
    """results.json of `retain diagnose`

    Layer-by-layer diagnostics of a base and a tuned model. Each of drift, importance,
    interference, representation and output is null when not computed (reason in skipped).
    """

    FORMAT: ClassVar[str] = "retain.diagnose/1"
    WRITER: ClassVar[str] = "retain diagnose"

    format: Literal["retain.diagnose/1"] = "retain.diagnose/1"
    """The file's format and version."""
    kind: Literal["diagnose"] = "diagnose"
    """What wrote the file: a diagnosis."""
    retain_version: str
    """The version of retain that wrote it."""
    created: str
    """When it was written (ISO 8601 date-time, UTC)."""
    base: ModelInfo
    """The base (reference) model."""
    tuned: ModelInfo
    """The tuned model."""
    settings: DiagnoseSettings
    """What the diagnosis was asked to do."""
    drift: ParameterDrift | None
    """Parameter drift; None when not computed."""
    importance: FisherImportance | None
    """Fisher importance; None when not computed (it needs the new task's data and a causal
    LM)."""
    interference: GradientInterference | None
    """Gradient interference; None when not computed (it needs the new task's data and a causal
    LM)."""
    representation: list[CkaLayer] | None
    """Linear CKA per layer (embeddings first) between base and tuned hidden states on general
    text; None when not computed."""
    output: OutputShift | None
    """Next-token distribution shift from base to tuned on general text; None when not computed
    (it needs a causal LM)."""
    skipped: dict[str, str]
    """Diagnostics not computed, with the reason."""
    warnings: list[str]
    """Warnings about the comparison (e.g. different tokenizers)."""
    timings: dict[str, Num]
    """Seconds per phase (``loading`` and one per diagnostic), in order."""
    seconds: float
    """Wall-clock seconds of the whole diagnosis."""
