"""``EvalSuite``: named probes evaluated together, a stored baseline, per-probe degradation.

A suite answers "what did this fine-tune forget?" for one model family: evaluate the base model
(the baseline), evaluate the tuned one, and compare probe by probe with the direction of each score
explicit (:func:`retain.metrics.degradation`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from retain.errors import RetainError
from retain.evaluation.base import Probe, shared_embeddings
from retain.metrics import Degradation, degradation

__all__ = ["CapabilityChange", "CapabilityScore", "EvalSuite", "SuiteResult", "verdict"]


@dataclass(frozen=True)
class CapabilityScore:
    """One probe's score on one model, with its unit, direction and wall time (seconds)."""

    name: str
    metric: str
    higher_is_better: bool
    score: float
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class SuiteResult:
    """All probe scores of one model, keyed by probe name (in the suite's order)."""

    suite: str
    scores: dict[str, CapabilityScore]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "suite": self.suite,
            "scores": {
                name: {
                    "metric": s.metric,
                    "higher_is_better": s.higher_is_better,
                    "score": s.score,
                    "details": s.details,
                    "seconds": s.seconds,
                }
                for name, s in self.scores.items()
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuiteResult:
        """The result :meth:`to_dict` described (wall times kept)."""
        scores = {
            name: CapabilityScore(
                name,
                str(s["metric"]),
                bool(s["higher_is_better"]),
                math.nan if s["score"] is None else float(s["score"]),
                dict(s["details"]),
                float(s["seconds"]),
            )
            for name, s in data["scores"].items()
        }
        return cls(str(data["suite"]), scores)


@dataclass(frozen=True)
class CapabilityChange:
    """A capability before and after fine-tuning (``change.degradation > 0`` means worse)."""

    before: CapabilityScore
    after: CapabilityScore
    change: Degradation

    @property
    def name(self) -> str:
        """The probe's name."""
        return self.before.name

    def to_dict(self, tolerance: float) -> dict[str, Any]:
        """JSON-friendly form, with ``worsened`` judged at relative ``tolerance``."""
        return {
            "name": self.name,
            "metric": self.before.metric,
            "higher_is_better": self.before.higher_is_better,
            **self.change.to_dict(),
            "worsened": self.change.worsened(tolerance),
            "details_before": self.before.details,
            "details_after": self.after.details,
        }


class EvalSuite:
    """Named probes evaluated together on one model.

    >>> suite = EvalSuite("empty", [])
    >>> suite.names
    []
    """

    def __init__(self, name: str, probes: Sequence[Probe], description: str = "") -> None:
        names = [p.name for p in probes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise RetainError(f"suite {name!r} has two probes named {duplicates[0]!r}; rename one")
        self.name = name
        self.description = description
        self.probes = list(probes)
        self.baseline: SuiteResult | None = None

    def __repr__(self) -> str:
        return f"EvalSuite({self.name!r}, probes={self.names})"

    @property
    def names(self) -> list[str]:
        """Probe names in evaluation order."""
        return [p.name for p in self.probes]

    def evaluate(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        progress: Callable[[str], None] | None = None,
    ) -> SuiteResult:
        """Run every probe on ``model``; ``progress`` receives one line per probe."""
        scores: dict[str, CapabilityScore] = {}
        with shared_embeddings():  # probes on frozen features embed each text once
            for probe in self.probes:
                start = time.perf_counter()
                result = probe.evaluate(model, tokenizer)
                seconds = time.perf_counter() - start
                scores[probe.name] = CapabilityScore(
                    probe.name,
                    probe.metric,
                    probe.higher_is_better,
                    float(result.score),
                    dict(result.details),
                    seconds,
                )
                if progress is not None:
                    shown = f"{probe.metric} = {result.score:.4g} ({seconds:.1f} s)"
                    progress(f"  {probe.name}: {shown}")
        return SuiteResult(self.name, scores)

    def set_baseline(self, result: SuiteResult) -> None:
        """Store the starting model's scores; :meth:`compare` uses them by default."""
        self._check(result)
        self.baseline = result

    def compare(
        self, after: SuiteResult, before: SuiteResult | None = None
    ) -> list[CapabilityChange]:
        """Per-probe change from ``before`` (default: the stored baseline) to ``after``."""
        before = before if before is not None else self.baseline
        if before is None:
            raise RetainError(
                f"suite {self.name!r} has no baseline; evaluate the starting model first "
                "(set_baseline) or pass before="
            )
        self._check(before)
        self._check(after)
        return [
            CapabilityChange(
                before.scores[n],
                after.scores[n],
                degradation(
                    before.scores[n].score,
                    after.scores[n].score,
                    higher_is_better=before.scores[n].higher_is_better,
                ),
            )
            for n in self.names
        ]

    def _check(self, result: SuiteResult) -> None:
        missing = [n for n in self.names if n not in result.scores]
        if missing:
            raise RetainError(
                f"result lacks probe {missing[0]!r} of suite {self.name!r}; "
                "evaluate both models with the same suite"
            )


def verdict(changes: Sequence[CapabilityChange], tolerance: float) -> tuple[bool, str]:
    """``(degraded, one line)``: how many capabilities got worse by more than ``tolerance``.

    ``tolerance`` is relative (0.02 = 2 % of the starting score).
    """
    worse = [c for c in changes if c.change.worsened(tolerance)]
    pct = f"{tolerance:.0%}" if tolerance * 100 == int(tolerance * 100) else f"{tolerance:.1%}"
    if not worse:
        return False, (
            f"RETAINED: no capability degraded by more than {pct} ({len(changes)} checked)"
        )
    worst = max(worse, key=lambda c: c.change.relative_degradation)
    w = worst.change
    return True, (
        f"FORGOT: {len(worse)} of {len(changes)} capabilities degraded by more than {pct}; "
        f"worst: {worst.name} {worst.before.metric} {w.before:.4g} -> {w.after:.4g} "
        f"({w.relative_degradation:+.1%} worse)"
    )
