"""``EvalSuite``: named probes evaluated together, a stored baseline, per-probe degradation.

A suite answers "what did this fine-tune forget?" for one model family: evaluate the base model
(the baseline), evaluate the tuned one, and compare probe by probe with the direction of each score
explicit (:func:`retain.metrics.degradation`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from retain.errors import RetainError
from retain.evaluation.base import Probe, shared_embeddings
from retain.metrics import Degradation, degradation
from retain.paired_statistics import (
    ExampleScores,
    Judgement,
    PairedChange,
    judge,
    paired_change,
)

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
    examples: ExampleScores | None = None


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
                    "examples": None if s.examples is None else s.examples.to_json(),
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
                None if s.get("examples") is None else ExampleScores.from_json(s["examples"]),
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

    @functools.cached_property
    def paired(self) -> PairedChange | None:
        """The relative degradation's paired bootstrap interval and test on the probe's
        examples (:func:`~retain.paired_statistics.paired_change`, seeded); None when the probe
        gives no per-example scores. Computed on first use (the monitor never needs it)."""
        before, after = self.before.examples, self.after.examples
        if before is None or after is None or len(before) != len(after) or not len(before):
            return None
        return paired_change(before, after, higher_is_better=self.before.higher_is_better)

    def judgement(self, tolerance: float) -> Judgement:
        """WORSE / WITHIN / UNCLEAR at relative ``tolerance`` from the interval
        (:func:`~retain.paired_statistics.judge`); without one, from the point estimate
        (WORSE beyond the tolerance, else WITHIN)."""
        if self.paired is not None:
            return judge(self.paired, tolerance)
        return Judgement("WORSE" if self.change.worsened(tolerance) else "WITHIN")

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
                    result.examples,
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


def _pct(value: float) -> str:
    return f"{value:.0%}" if value * 100 == int(value * 100) else f"{value:.1%}"


Outcome = Literal["RETAINED", "UNCLEAR", "FORGOT"]


def verdict(changes: Sequence[CapabilityChange], tolerance: float) -> tuple[Outcome, str]:
    """``(outcome, one line)`` for capabilities judged at relative ``tolerance`` (0.02 = 2 % of
    the starting score), each by :meth:`CapabilityChange.judgement`:

    * ``FORGOT`` when any capability is WORSE (its 95 % interval lies beyond the tolerance);
    * ``UNCLEAR`` when none is WORSE but some interval straddles the tolerance (the line says
      about how many examples would settle the closest one);
    * ``RETAINED`` when every capability is WITHIN.
    """
    judged = [(c, c.judgement(tolerance)) for c in changes]
    pct = _pct(tolerance)
    worse = [c for c, j in judged if j.verdict == "WORSE"]
    if worse:
        worst = max(worse, key=lambda c: c.change.relative_degradation)
        w = worst.change
        return "FORGOT", (
            f"FORGOT: {len(worse)} of {len(changes)} capabilities degraded by more than {pct}; "
            f"worst: {worst.name} {worst.before.metric} {w.before:.4g} -> {w.after:.4g} "
            f"({w.relative_degradation:+.1%} worse{_interval_text(worst)})"
        )
    unclear = [(c, j) for c, j in judged if j.verdict == "UNCLEAR"]
    if unclear:
        needed = [(j.examples_needed, c.name) for c, j in unclear if j.examples_needed]
        settle = ""
        if needed:
            count, name = min(needed)
            settle = f"; about {count} examples would settle {name}"
        names = ", ".join(c.name for c, _ in unclear)
        return "UNCLEAR", (
            f"UNCLEAR: no capability surely degraded by more than {pct}, but the 95% interval of "
            f"{len(unclear)} of {len(changes)} straddles it ({names}){settle}"
        )
    return "RETAINED", (
        f"RETAINED: no capability degraded by more than {pct} ({len(changes)} checked)"
    )


def _interval_text(change: CapabilityChange) -> str:
    paired = change.paired
    if paired is None:
        return ""
    return f", 95% interval {paired.low:+.1%} to {paired.high:+.1%}"
