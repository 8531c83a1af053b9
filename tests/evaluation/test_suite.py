"""The suite verdict: FORGOT, UNCLEAR or RETAINED from the paired intervals of its capabilities."""

from __future__ import annotations

import numpy as np

from retain.evaluation.suite import CapabilityChange, CapabilityScore, verdict
from retain.metrics import degradation
from retain.paired_statistics import ExampleScores


def test_the_verdict_is_three_way_from_paired_intervals() -> None:
    """A planted loss of 20 % of the correct answers on 2,000 items is FORGOT; the same loss on
    20 items straddles a 5 % tolerance (UNCLEAR, with how many items would settle it); no change
    is RETAINED."""
    rng = np.random.default_rng(0)

    def change(n: int, lost: float) -> CapabilityChange:
        right = (rng.random(n) < 0.9).astype(float)
        after = right * (rng.random(n) >= lost)
        scores = [
            CapabilityScore("c", "accuracy", True, float(v.mean()), examples=ExampleScores(v))
            for v in (right, after)
        ]
        before_score, after_score = scores
        moved = degradation(before_score.score, after_score.score, higher_is_better=True)
        return CapabilityChange(before_score, after_score, moved)

    outcome, line = verdict([change(2000, 0.2), change(2000, 0.0)], tolerance=0.05)
    assert outcome == "FORGOT"
    assert "95% interval" in line
    small = change(20, 0.1)
    outcome, line = verdict([small], tolerance=0.05)
    assert outcome == "UNCLEAR"
    assert small.judgement(0.05).examples_needed is not None
    assert f"about {small.judgement(0.05).examples_needed} examples would settle c" in line
    assert verdict([change(500, 0.0)], tolerance=0.05)[0] == "RETAINED"
