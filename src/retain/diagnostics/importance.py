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
  ``d² = ½ Σ_i (√F̂_old,i - √F̂_new,i)²`` and ``overlap = 1 - d² = Σ_i √(F̂_old,i F̂_new,i)`` in
  ``[0, 1]``: 1 when the two Fishers are proportional, 0 when they have disjoint support.

A seeded random sample (with replacement) of ``(F_old, F_new)`` pairs backs the scatter plot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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

    Expanding the square with ``Σ F̂ = 1`` gives ``Σ √(F̂_old · F̂_new)`` (the Bhattacharyya
    coefficient), which is how it is computed: no normalised copies are made.

    >>> round(overlap(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])), 6)
    1.0
    >>> overlap(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))
    0.0
    """
    sums = _Sums()
    sums.add(old, new)
    return sums.overlap()


class _Sums:
    """Running ``Σ F_old``, ``Σ F_new`` and ``Σ √(F_old F_new)`` in float64."""

    def __init__(self) -> None:
        self.old = self.new = self.root = 0.0

    def add(self, old: Tensor, new: Tensor) -> None:
        a, b = old.detach().float(), new.detach().float()
        self.old += float(a.sum(dtype=torch.float64))
        self.new += float(b.sum(dtype=torch.float64))
        self.root += float((a * b).sqrt_().sum(dtype=torch.float64))

    def overlap(self) -> float | None:
        if self.old <= 0 or self.new <= 0:
            return None
        return min(1.0, self.root / math.sqrt(self.old * self.new))


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


_RADIX = 1 << 16  # bins per radix pass: 16 bits of a 32-bit key
_CHUNK = 1 << 22  # entries keyed at once (int32 keys: 16 MiB)


def _quantile(values: Sequence[Tensor], q: float) -> float:
    """The ``q`` quantile (lower) of all entries of ``values`` together: the ``k``-th smallest
    with ``k = min(n, max(1, ⌈q·n⌉))`` over their ``n`` entries, as
    ``torch.cat([v.flatten() for v in values]).kthvalue(k)`` gives, without that copy.

    Radix select on order-preserving 32-bit keys of the float32 values (:func:`_keys`): one pass
    counts each key's high 16 bits, a second the low 16 bits of the keys whose high bits hold
    the ``k``-th entry. Memory: ``_CHUNK`` int32 keys and two histograms of ``2**16`` counts,
    whatever the model's size (``kthvalue`` on a concatenated copy took the values' float32
    bytes three times over, plus int64 indices).

    >>> _quantile([torch.tensor([3.0, -1.0]), torch.tensor([2.0, 0.5, 7.0])], 0.5)
    2.0
    """
    n = sum(v.numel() for v in values)
    k = min(n, max(1, math.ceil(q * n)))
    high = _histogram(values, None)
    bucket, k = _bucket_of(high, k)
    low = _histogram(values, bucket)
    key = (bucket << 16) | _bucket_of(low, k)[0]
    bits = key - (1 << 31) if key >= 1 << 31 else -1 - key  # invert _keys
    return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32))


def _keys(chunk: Tensor) -> Tensor:
    """int32 bit patterns of unsigned 32-bit keys that order like the float32 values: a
    non-negative float's bits with the sign bit set, a negative float's bits all flipped (so
    ``-0.0`` sorts just below ``+0.0`` and larger magnitudes lower)."""
    bits = chunk.detach().float().contiguous().view(torch.int32)
    flip = (bits >> 31).bitwise_or_(-(1 << 31))  # -1 for a negative float, else the sign bit
    return flip.bitwise_xor_(bits)


def _histogram(values: Sequence[Tensor], bucket: int | None) -> Tensor:
    """Counts of the high 16 bits of every key (``bucket`` None), or of the low 16 bits of the
    keys whose high 16 bits equal ``bucket``, as an int64 ``[2**16]`` CPU tensor."""
    counts = torch.zeros(_RADIX, dtype=torch.int64)
    for value in values:
        flat = value.detach().reshape(-1)
        for start in range(0, flat.numel(), _CHUNK):
            keys = _keys(flat[start : start + _CHUNK])
            high = (keys >> 16).bitwise_and_(_RADIX - 1)
            digits = high if bucket is None else keys[high == bucket].bitwise_and_(_RADIX - 1)
            counts += torch.bincount(digits, minlength=_RADIX).cpu()
    return counts


def _bucket_of(counts: Tensor, k: int) -> tuple[int, int]:
    """``(b, k')``: the bucket ``b`` that holds the ``k``-th smallest entry (1-based) and its
    rank ``k'`` among the entries of that bucket."""
    cumulative = counts.cumsum(0)
    bucket = int(torch.searchsorted(cumulative, torch.tensor([k]), right=False)[0])
    before = int(cumulative[bucket - 1]) if bucket > 0 else 0
    return bucket, k - before


def _quadrants(old: Tensor, new: Tensor, t_old: float, t_new: float) -> dict[str, int]:
    a = (old.detach() > t_old) & (old.detach() > 0)
    b = (new.detach() > t_new) & (new.detach() > 0)
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
    t_old = _quantile([old[n] for n in old], 1 - top)
    t_new = _quantile([new[n] for n in old], 1 - top)
    groups: dict[str, list[str]] = {}
    for name in old:
        groups.setdefault(layer_of(name), []).append(name)
    total = _Sums()
    counts = dict.fromkeys(QUADRANTS, 0)
    rows = []
    for layer, names in groups.items():
        sums = _Sums()
        quadrants = dict.fromkeys(QUADRANTS, 0)
        numel = 0
        for name in names:
            sums.add(old[name], new[name])
            for key, value in _quadrants(old[name], new[name], t_old, t_new).items():
                quadrants[key] += value
            numel += old[name].numel()
        rows.append((layer, numel, sums, quadrants))
        total.old, total.new, total.root = (
            total.old + sums.old,
            total.new + sums.new,
            total.root + sums.root,
        )
        for key, value in quadrants.items():
            counts[key] += value
    layers = [
        LayerImportance(
            name=layer,
            numel=numel,
            old_mass=sums.old,
            new_mass=sums.new,
            old_share=sums.old / total.old if total.old > 0 else 0.0,
            new_share=sums.new / total.new if total.new > 0 else 0.0,
            old_mean=sums.old / numel,
            new_mean=sums.new / numel,
            overlap=sums.overlap(),
            quadrants=quadrants,
        )
        for layer, numel, sums, quadrants in rows
    ]
    return ImportanceReport(
        layers=layers,
        quadrants=counts,
        thresholds={"old": t_old, "new": t_new},
        top=top,
        overlap=total.overlap(),
        numel=sum(counts.values()),
        scatter=_scatter(old, new, scatter_points, seed),
    )


def _scatter(
    old: Mapping[str, Tensor], new: Mapping[str, Tensor], points: int, seed: int
) -> dict[str, list[float]]:
    """``points`` pairs drawn uniformly (with replacement) over all scalars, in name order."""
    sizes = torch.tensor([old[n].numel() for n in old], dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    count = min(points, int(sizes.sum()))
    picks = torch.randint(int(sizes.sum()), (count,), generator=generator).sort().values
    bounds = sizes.cumsum(0).long()
    which = torch.searchsorted(bounds, picks, right=True)
    starts = bounds - sizes.long()
    xs: list[float] = []
    ys: list[float] = []
    for k, name in enumerate(old):
        local = picks[which == k] - starts[k]
        if local.numel():
            xs += old[name].detach().float().flatten()[local.to(old[name].device)].tolist()
            ys += new[name].detach().float().flatten()[local.to(new[name].device)].tolist()
    return {"old": xs, "new": ys}
