"""Fisher importance for a prior capability and a new task, per layer, and their overlap.

Given two diagonal Fishers over the same parameters (:func:`retain.diagnostics.fisher.
estimate_fisher`), ``F_old`` on the prior capability and ``F_new`` on the new task:

* per layer: the Fisher mass ``Σ_l F`` of each (nats² per parameter unit², summed) and its share
  of the model's total, and the mean per scalar;
* quadrants: a scalar is *critical* for a capability when its Fisher exceeds that capability's
  ``(1 - top)`` quantile over all compared scalars (and is > 0); every scalar falls in one of
  ``old_only``, ``new_only``, ``both``, ``neither``. Scalars critical for both are where the new
  task's updates hurt the old capability most;
* overlap (Kirkpatrick et al., 2017, PNAS, Fig. 3): with each Fisher normalised to unit sum,
  ``F̂ = F / Σ F``, the Fréchet distance between the two diagonal Gaussians' precisions is
  ``d² = ½ Σ_i (√F̂_old,i - √F̂_new,i)²`` and ``overlap = 1 - d²`` in ``[0, 1]``: 1 when the two
  Fishers are proportional, 0 when they have disjoint support.

A seeded random sample (with replacement) of ``(F_old, F_new)`` pairs backs the scatter plot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from retain.diagnostics.drift import layer_of
from retain.errors import RetainError

__all__ = ["ImportanceReport", "LayerImportance", "fisher_overlap", "overlap"]

QUADRANTS = ("old_only", "new_only", "both", "neither")


def overlap(old: Tensor, new: Tensor) -> float | None:
    """``1 - ½ Σ (√F̂_old - √F̂_new)²`` of two non-negative tensors (None when either sums to 0).

    >>> overlap(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))
    1.0
    >>> overlap(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    0.0
    """
    a, b = old.double().flatten(), new.double().flatten()
    sa, sb = float(a.sum()), float(b.sum())
    if sa <= 0 or sb <= 0:
        return None
    distance = 0.5 * float(((a / sa).sqrt() - (b / sb).sqrt()).square().sum())
    return 1.0 - distance


@dataclass(frozen=True)
class LayerImportance:
    """One layer's Fisher figures (see the module docstring)."""

    name: str
    numel: int
    old_mass: float
    new_mass: float
    old_share: float
    new_share: float
    old_mean: float
    new_mean: float
    overlap: float | None
    quadrants: dict[str, int]


@dataclass(frozen=True)
class ImportanceReport:
    """Fisher importance of a prior capability (``old``) and a new task (``new``).

    Attributes:
        layers: per-layer figures in the model's order.
        quadrants: counts of scalars per quadrant over the whole model.
        thresholds: ``{"old": t_old, "new": t_new}``, the ``(1 - top)`` quantiles.
        top: the fraction of scalars counted critical per capability.
        overlap: whole-model overlap.
        scatter: ``{"old": [...], "new": [...]}``, a random sample of paired Fisher values.
    """

    layers: list[LayerImportance]
    quadrants: dict[str, int]
    thresholds: dict[str, float]
    top: float
    overlap: float | None
    numel: int
    scatter: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def _quantile(values: Tensor, q: float) -> float:
    """The ``q`` quantile (lower) of a flat tensor of any size."""
    k = min(values.numel(), max(1, math.ceil(q * values.numel())))
    return float(values.kthvalue(k).values)


def _quadrants(old: Tensor, new: Tensor, t_old: float, t_new: float) -> dict[str, int]:
    a = (old > t_old) & (old > 0)
    b = (new > t_new) & (new > 0)
    both = int((a & b).sum())
    old_only = int(a.sum()) - both
    new_only = int(b.sum()) - both
    return {
        "old_only": old_only,
        "new_only": new_only,
        "both": both,
        "neither": old.numel() - old_only - new_only - both,
    }


def fisher_overlap(
    old: Mapping[str, Tensor],
    new: Mapping[str, Tensor],
    *,
    top: float = 0.1,
    scatter_points: int = 20_000,
    seed: int = 0,
) -> ImportanceReport:
    """Per-layer importance, quadrant counts and overlap of two diagonal Fishers.

    ``old`` and ``new`` map parameter names to same-shaped non-negative tensors; names present in
    only one are an error. ``top`` in ``(0, 1)``: the fraction of scalars called critical.
    """
    if not 0 < top < 1:
        raise RetainError(f"top must be a fraction in (0, 1) (0.1 = the top 10 %), got {top}")
    if set(old) != set(new):
        only = sorted(set(old) ^ set(new))[:3]
        raise RetainError(
            f"the two Fishers cover different parameters (e.g. {only}); estimate both over the "
            "same params"
        )
    if not old:
        raise RetainError("fisher_overlap got empty Fishers")
    for name in old:
        if old[name].shape != new[name].shape:
            raise RetainError(
                f"Fisher of {name!r} has shape {tuple(old[name].shape)} for the old capability "
                f"and {tuple(new[name].shape)} for the new task"
            )
    flat_old = torch.cat([old[n].detach().float().flatten().cpu() for n in old])
    flat_new = torch.cat([new[n].detach().float().flatten().cpu() for n in old])
    t_old = _quantile(flat_old, 1 - top)
    t_new = _quantile(flat_new, 1 - top)
    sum_old, sum_new = float(flat_old.double().sum()), float(flat_new.double().sum())
    groups: dict[str, list[str]] = {}
    for name in old:
        groups.setdefault(layer_of(name), []).append(name)
    layers = []
    for layer, names in groups.items():
        a = torch.cat([old[n].detach().float().flatten().cpu() for n in names])
        b = torch.cat([new[n].detach().float().flatten().cpu() for n in names])
        mass_a, mass_b = float(a.double().sum()), float(b.double().sum())
        layers.append(
            LayerImportance(
                name=layer,
                numel=a.numel(),
                old_mass=mass_a,
                new_mass=mass_b,
                old_share=mass_a / sum_old if sum_old > 0 else 0.0,
                new_share=mass_b / sum_new if sum_new > 0 else 0.0,
                old_mean=mass_a / a.numel(),
                new_mean=mass_b / b.numel(),
                overlap=overlap(a, b),
                quadrants=_quadrants(a, b, t_old, t_new),
            )
        )
    generator = torch.Generator().manual_seed(seed)
    count = min(scatter_points, flat_old.numel())
    pick = torch.randint(flat_old.numel(), (count,), generator=generator)  # with replacement
    return ImportanceReport(
        layers=layers,
        quadrants=_quadrants(flat_old, flat_new, t_old, t_new),
        thresholds={"old": t_old, "new": t_new},
        top=top,
        overlap=overlap(flat_old, flat_new),
        numel=flat_old.numel(),
        scatter={"old": flat_old[pick].tolist(), "new": flat_new[pick].tolist()},
    )
