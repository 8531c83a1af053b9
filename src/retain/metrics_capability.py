"""Capability degradation: one score before fine-tuning, one after, and which direction is good.

The direction (``higher_is_better``) is a required keyword, never guessed from the metric's name:
accuracy falling and perplexity rising are both a positive :attr:`Degradation.degradation`.
The matrix metrics (backward transfer, forgetting ...) are in :mod:`retain.metrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from retain.errors import RetainError

__all__ = ["Degradation", "degradation", "perplexity_ratio"]


def _score(name: str, value: float) -> float:
    """``value`` as a float, refusing NaN, booleans and non-numbers with a message naming it."""
    # float() would also accept True and "0.5": both are mistakes here, not scores.
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise RetainError(f"{name} must be a number (a measured score); got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RetainError(f"{name} must be a number (a measured score); got {value!r}") from None
    if math.isnan(number):
        raise RetainError(f"{name} is NaN; compare two measured scores (re-run the evaluation)")
    return number


def _safe_ratio(numerator: float, denominator: float) -> float:
    """``numerator / |denominator|``, NaN when the denominator is 0 (the ratio is undefined)."""
    return numerator / abs(denominator) if denominator != 0 else math.nan


@dataclass(frozen=True)
class Degradation:
    """How one capability score moved between two models, with its direction explicit.

    Attributes:
        before: score of the starting (pretrained) model.
        after: score of the fine-tuned model.
        higher_is_better: ``True`` for accuracy-like scores, ``False`` for perplexity/loss-like.

    ``degradation`` is positive when the score got worse whichever the direction, so thresholds can
    be written once. Worked example, accuracy 0.80 -> 0.60 and perplexity 10 -> 12:

    >>> acc = Degradation(before=0.80, after=0.60, higher_is_better=True)
    >>> round(acc.change, 4), round(acc.degradation, 4), round(acc.relative_degradation, 4)
    (-0.2, 0.2, 0.25)
    >>> ppl = Degradation(before=10.0, after=12.0, higher_is_better=False)
    >>> ppl.change, ppl.degradation, ppl.relative_degradation, ppl.worsened(tolerance=0.25)
    (2.0, 2.0, 0.2, False)
    """

    before: float
    after: float
    higher_is_better: bool

    def __post_init__(self) -> None:
        if not isinstance(self.higher_is_better, (bool, np.bool_)):
            raise RetainError(
                "higher_is_better must be True (accuracy-like) or False (perplexity/loss-like); "
                f"got {self.higher_is_better!r}"
            )
        # Store plain floats/bools so that numpy scalars never leak into reports or JSON.
        object.__setattr__(self, "before", _score("before", self.before))
        object.__setattr__(self, "after", _score("after", self.after))
        object.__setattr__(self, "higher_is_better", bool(self.higher_is_better))

    @property
    def change(self) -> float:
        """``after - before`` in the score's own unit, whatever the direction."""
        return self.after - self.before

    @property
    def relative_change(self) -> float:
        """``change / |before|``; NaN when ``before == 0`` (no scale to compare against)."""
        return _safe_ratio(self.change, self.before)

    @property
    def degradation(self) -> float:
        """How much worse: ``before - after`` if higher is better, else ``after - before``.

        Positive means the capability got worse, negative that it improved.
        """
        return -self.change if self.higher_is_better else self.change

    @property
    def relative_degradation(self) -> float:
        """``degradation / |before|`` (0.1 = 10 % worse); NaN when ``before == 0``.

        Dividing by ``|before|`` keeps the sign of :attr:`degradation` for negative scores
        (e.g. a log-likelihood of -2.0 falling to -2.5 is 0.25 = 25 % worse).
        """
        return _safe_ratio(self.degradation, self.before)

    def worsened(self, tolerance: float = 0.0) -> bool:
        """Whether the relative degradation exceeds ``tolerance`` (0.05 = more than 5 % worse).

        When ``before == 0`` the relative change is unbounded, so any degradation above 0 counts as
        worsened whatever the tolerance (and no change does not). A negative tolerance demands an
        improvement of at least that fraction.

        >>> Degradation(before=0.0, after=0.5, higher_is_better=False).worsened(tolerance=0.1)
        True
        """
        if (
            isinstance(tolerance, bool)
            or not isinstance(tolerance, (int, float))
            or math.isnan(tolerance)
        ):
            raise RetainError(
                f"tolerance must be a fraction such as 0.05 (5 % worse allowed); got {tolerance!r}"
            )
        limit = float(tolerance)
        if self.before == 0:
            return self.degradation > 0
        return self.relative_degradation > limit

    def to_dict(self) -> dict[str, float | bool | None]:
        """Every field and derived value, JSON-friendly: NaN and infinities become ``None``.

        >>> summary = Degradation(before=0.0, after=0.5, higher_is_better=True).to_dict()
        >>> summary["degradation"], summary["relative_degradation"]
        (-0.5, None)
        """
        values: dict[str, float | bool | None] = {"higher_is_better": self.higher_is_better}
        for key, number in (
            ("before", self.before),
            ("after", self.after),
            ("change", self.change),
            ("relative_change", self.relative_change),
            ("degradation", self.degradation),
            ("relative_degradation", self.relative_degradation),
        ):
            values[key] = number if math.isfinite(number) else None
        return values


def degradation(before: float, after: float, *, higher_is_better: bool) -> Degradation:
    """The :class:`Degradation` of a score from ``before`` to ``after``.

    ``higher_is_better`` is keyword-only with no default: the direction of a score is never guessed.

    Formulas: ``degradation = before - after`` if higher is better, else ``after - before``;
    ``relative_degradation = degradation / |before|``. Positive means worse.

    >>> d = degradation(0.50, 0.45, higher_is_better=True)  # accuracy 50 % -> 45 %
    >>> round(d.degradation, 4), round(d.relative_degradation, 4), d.worsened(tolerance=0.05)
    (0.05, 0.1, True)
    """
    return Degradation(before=before, after=after, higher_is_better=higher_is_better)


def perplexity_ratio(before_ppl: float, after_ppl: float) -> float:
    """``after_ppl / before_ppl``: above 1 means the fine-tuned model got worse at the text.

    Equivalent to ``exp(after_nll - before_nll)`` for the mean token negative log-likelihoods, so it
    compares models on the same text and tokenizer only. Both perplexities must be positive;
    ``before_ppl`` must be finite (``after_ppl = inf``, a diverged model, gives ``inf``).

    >>> perplexity_ratio(8.0, 10.0)  # perplexity 8 -> 10 is 25 % worse
    1.25
    """
    before = _score("before_ppl", before_ppl)
    after = _score("after_ppl", after_ppl)
    if not (0 < before < math.inf):
        raise RetainError(f"before_ppl must be a positive, finite perplexity; got {before_ppl!r}")
    if not after > 0:
        raise RetainError(f"after_ppl must be a positive perplexity; got {after_ppl!r}")
    return after / before
