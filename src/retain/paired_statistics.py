"""How sure a capability change is: paired bootstrap intervals, paired tests, a three-way verdict.

A probe scores the same examples on both models, so the two scores are *paired*: resampling the
examples (with replacement, the same draw for both models) shows how much the change would move
with other examples from the same source. Every probe that can reports its per-example
contributions as :class:`ExampleScores`:

* a mean of per-example values (accuracy: correctness 0/1; ``score = Σ v_i / n``);
* a ratio (``score = Σ v_i / Σ w_i``; a mean per token when ``w_i`` counts each text's tokens);
* a perplexity (``score = exp(Σ v_i / Σ w_i)`` with ``v_i`` a text's negative log-likelihood in
  nats and ``w_i`` its scored tokens).

:func:`paired_change` draws ``B`` bootstrap resamples at once (a ``B x n`` matrix of counts
times the ``n x 4`` matrix of both models' values and weights), recomputes both scores on each,
and takes the percentile interval of the relative degradation
``d = s·(before − after) / |before|`` (``s = +1`` when higher is better, ``−1`` otherwise, so
``d > 0`` always means worse). The paired test is McNemar's exact test when the values are
correctness (0/1, mean), else a paired permutation test that swaps each example's two values
with probability 1/2 (same ``B``).

:func:`judge` turns the interval into a verdict against a relative tolerance ``τ``: WORSE when
the whole interval lies beyond ``τ`` (``low > τ``), WITHIN when it lies inside (``high ≤ τ``),
UNCLEAR otherwise, with the number of examples that would resolve it (the half-width shrinks as
``1/√n``: ``n' = n · (half-width / |d − τ|)²``).

>>> import numpy as np
>>> before = ExampleScores(np.array([1.0] * 90 + [0.0] * 10))
>>> after = ExampleScores(np.array([1.0] * 60 + [0.0] * 40))
>>> change = paired_change(before, after, higher_is_better=True, resamples=2000, seed=0)
>>> round(change.degradation, 3), change.low > 0.2, change.test
(0.333, True, 'mcnemar')
>>> judge(change, tolerance=0.05).verdict
'WORSE'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from retain.errors import RetainError

__all__ = [
    "RESAMPLES",
    "ExampleScores",
    "Judgement",
    "PairedChange",
    "Verdict",
    "judge",
    "judge_interval",
    "paired_change",
]

#: Bootstrap resamples (and permutations) unless a caller asks otherwise.
RESAMPLES = 1000
#: Resamples drawn per matrix product: bounds the working set to ``_CHUNK x n`` counts.
_CHUNK = 250
Transform = Literal["mean", "ratio", "perplexity"]
Verdict = Literal["WORSE", "WITHIN", "UNCLEAR"]


@dataclass(frozen=True, eq=False)
class ExampleScores:
    """Per-example contributions to a probe's score (see the module docstring).

    Attributes:
        values: ``v_i`` per example (correctness, a negative log-likelihood in nats, ...).
        weights: ``w_i`` per example (tokens scored), or None for a plain mean.
        transform: how the score follows from the sums: ``mean`` (``Σv/n``), ``ratio``
            (``Σv/Σw``) or ``perplexity`` (``exp(Σv/Σw)``).
    """

    values: np.ndarray
    weights: np.ndarray | None = None
    transform: Transform = "mean"

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64).reshape(-1)
        object.__setattr__(self, "values", values)
        if self.weights is not None:
            weights = np.asarray(self.weights, dtype=np.float64).reshape(-1)
            if weights.shape != values.shape:
                raise RetainError(
                    f"per-example weights ({weights.size}) and values ({values.size}) differ in "
                    "length; give one weight per example"
                )
            object.__setattr__(self, "weights", weights)
        elif self.transform != "mean":
            raise RetainError(f"a {self.transform} score needs per-example weights")
        if not np.isfinite(values).all():
            raise RetainError("per-example values must be finite; a probe returned NaN or inf")

    def __len__(self) -> int:
        return int(self.values.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExampleScores):
            return NotImplemented
        same_weights = (self.weights is None and other.weights is None) or (
            self.weights is not None
            and other.weights is not None
            and np.array_equal(self.weights, other.weights)
        )
        return (
            self.transform == other.transform
            and np.array_equal(self.values, other.values)
            and same_weights
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def weight_values(self) -> np.ndarray:
        """``w_i``, each 1 for a plain mean."""
        return np.ones_like(self.values) if self.weights is None else self.weights

    @property
    def score(self) -> float:
        """The probe's score recomputed from the examples."""
        sums = np.array([self.values.sum()]), np.array([self.weight_values.sum()])
        return float(_scores(self, *sums)[0])

    def to_json(self) -> dict[str, object]:
        """Plain JSON (lists of floats), as checkpoints keep it."""
        return {
            "values": self.values.tolist(),
            "weights": None if self.weights is None else self.weights.tolist(),
            "transform": self.transform,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ExampleScores:
        """The scores :meth:`to_json` wrote."""
        weights = data.get("weights")
        transform = str(data.get("transform", "mean"))
        if transform not in ("mean", "ratio", "perplexity"):
            raise RetainError(f"unknown per-example transform {transform!r}")
        return cls(
            np.asarray(data["values"], dtype=np.float64),
            None if weights is None else np.asarray(weights, dtype=np.float64),
            transform,  # type: ignore[arg-type]
        )


def _scores(examples: ExampleScores, value_sums: np.ndarray, weight_sums: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(value_sums / weight_sums, dtype=np.float64)
    return np.exp(ratio) if examples.transform == "perplexity" else ratio


@dataclass(frozen=True)
class PairedChange:
    """The change of one capability on paired examples, with its uncertainty.

    Attributes:
        before, after: the two scores (recomputed from the examples).
        degradation: relative degradation ``d`` (positive = worse; see the module docstring).
        low, high: the percentile bootstrap interval of ``d`` at ``level``.
        level: the interval's coverage (0.95).
        p_value: two-sided p-value of "no change" from :attr:`test`.
        test: ``mcnemar`` (correctness) or ``permutation``.
        examples: paired examples ``n``.
        resamples: bootstrap resamples ``B``.
    """

    before: float
    after: float
    degradation: float
    low: float
    high: float
    level: float
    p_value: float
    test: str
    examples: int
    resamples: int


def _check_pair(before: ExampleScores, after: ExampleScores) -> None:
    if len(before) != len(after):
        raise RetainError(
            f"paired scores need the same examples: {len(before)} before, {len(after)} after; "
            "evaluate both models on the same data"
        )
    if before.transform != after.transform:
        raise RetainError("paired scores must be of the same kind (mean, ratio or perplexity)")
    if len(before) == 0:
        raise RetainError("no examples to compare; give the probe at least one example")


def _relative(before: np.ndarray, after: np.ndarray, higher_is_better: bool) -> np.ndarray:
    sign = 1.0 if higher_is_better else -1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(sign * (before - after) / np.abs(before), dtype=np.float64)


def _bootstrap(
    before: ExampleScores,
    after: ExampleScores,
    higher_is_better: bool,
    rng: np.random.Generator,
    resamples: int,
) -> np.ndarray:
    """``d`` on each of ``resamples`` paired resamples (counts from one index draw per row)."""
    n = len(before)
    table = np.stack(
        [before.values, before.weight_values, after.values, after.weight_values], axis=1
    )
    out = []
    for start in range(0, resamples, _CHUNK):
        rows = min(_CHUNK, resamples - start)
        index = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
        counts = np.bincount(index.ravel(), minlength=rows * n).reshape(rows, n)
        sums = counts.astype(np.float64) @ table
        b = _scores(before, sums[:, 0], sums[:, 1])
        a = _scores(after, sums[:, 2], sums[:, 3])
        out.append(_relative(b, a, higher_is_better))
    return np.concatenate(out)


def _mcnemar(before: np.ndarray, after: np.ndarray) -> float:
    """Exact two-sided McNemar p-value of paired correctness (binomial on discordant pairs)."""
    from scipy.stats import binom

    lost = int(((before == 1) & (after == 0)).sum())
    gained = int(((before == 0) & (after == 1)).sum())
    discordant = lost + gained
    if discordant == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(lost, gained), discordant, 0.5)))


def _permutation(
    before: ExampleScores, after: ExampleScores, rng: np.random.Generator, resamples: int
) -> float:
    """Two-sided p-value of a paired permutation test: each example's two values (and weights)
    swap with probability 1/2; the statistic is ``score_after − score_before``."""
    n = len(before)
    wb, wa = before.weight_values, after.weight_values
    observed = abs(after.score - before.score)
    hits = 0
    for start in range(0, resamples, _CHUNK):
        rows = min(_CHUNK, resamples - start)
        swap = rng.random((rows, n)) < 0.5
        keep = ~swap
        b = _scores(before, keep @ before.values + swap @ after.values, keep @ wb + swap @ wa)
        a = _scores(after, keep @ after.values + swap @ before.values, keep @ wa + swap @ wb)
        hits += int((np.abs(a - b) >= observed - 1e-12).sum())
    return (hits + 1) / (resamples + 1)


def _is_correctness(examples: ExampleScores) -> bool:
    values = examples.values
    return examples.transform == "mean" and bool(np.isin(values, (0.0, 1.0)).all())


def paired_change(
    before: ExampleScores,
    after: ExampleScores,
    *,
    higher_is_better: bool,
    resamples: int = RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> PairedChange:
    """The relative degradation of ``after`` against ``before`` on the same examples, its
    percentile bootstrap interval at ``level`` and a paired test (see the module docstring).
    Seeded: the same inputs give the same interval."""
    _check_pair(before, after)
    if not 0 < level < 1:
        raise RetainError(f"the interval's level must be between 0 and 1, got {level}")
    if resamples < 1:
        raise RetainError(f"resamples must be at least 1, got {resamples}")
    rng = np.random.default_rng(seed)
    draws = _bootstrap(before, after, higher_is_better, rng, resamples)
    finite = draws[np.isfinite(draws)]
    tail = (1 - level) / 2
    low, high = (
        (float(np.quantile(finite, tail)), float(np.quantile(finite, 1 - tail)))
        if finite.size
        else (math.nan, math.nan)
    )
    if _is_correctness(before) and _is_correctness(after):
        test, p = "mcnemar", _mcnemar(before.values, after.values)
    else:
        test, p = "permutation", _permutation(before, after, rng, resamples)
    b, a = before.score, after.score
    point = float(_relative(np.array([b]), np.array([a]), higher_is_better)[0])
    return PairedChange(b, a, point, low, high, level, p, test, len(before), resamples)


@dataclass(frozen=True)
class Judgement:
    """A capability's verdict against a tolerance, and what would settle an UNCLEAR one.

    Attributes:
        verdict: WORSE, WITHIN or UNCLEAR (see the module docstring).
        examples_needed: for UNCLEAR, about how many paired examples would make the interval
            exclude the tolerance if the change stayed the same (None when it cannot: the
            change sits exactly at the tolerance, or the interval is undefined).
    """

    verdict: Verdict
    examples_needed: int | None = None


def judge(change: PairedChange, tolerance: float) -> Judgement:
    """WORSE when ``low > tolerance``, WITHIN when ``high <= tolerance``, else UNCLEAR.

    >>> c = PairedChange(0.9, 0.88, 0.02, -0.01, 0.05, 0.95, 0.3, "mcnemar", 400, 1000)
    >>> judge(c, 0.04)  # the interval straddles 4 %: 400 * (0.03 / 0.02)^2 = 900 examples
    Judgement(verdict='UNCLEAR', examples_needed=900)
    """
    return judge_interval(change.degradation, change.low, change.high, change.examples, tolerance)


def judge_interval(
    degradation: float, low: float, high: float, examples: int, tolerance: float
) -> Judgement:
    """:func:`judge` from the figures a record keeps: the point ``degradation``, its interval
    ``[low, high]`` on ``examples`` paired examples, and the relative ``tolerance``.

    >>> judge_interval(0.10, 0.06, 0.14, 500, 0.02).verdict
    'WORSE'
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        return Judgement("UNCLEAR")
    if low > tolerance:
        return Judgement("WORSE")
    if high <= tolerance:
        return Judgement("WITHIN")
    gap = abs(degradation - tolerance)
    half = (high - low) / 2
    if gap == 0 or not math.isfinite(gap):
        return Judgement("UNCLEAR")
    return Judgement("UNCLEAR", math.ceil(examples * (half / gap) ** 2))
