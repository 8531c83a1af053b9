"""Paired bootstrap intervals, paired tests and the three-way verdict, against simulations with a
known ground truth and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retain.errors import RetainError
from retain.paired_statistics import ExampleScores, PairedChange, judge, paired_change


def _accuracy_pair(rng: np.random.Generator, n: int, p_before: float, flip: float):
    """Paired correctness: before ~ Bernoulli(p_before); each correct item is lost with
    probability ``flip`` (true relative degradation = flip), nothing is gained."""
    before = (rng.random(n) < p_before).astype(float)
    after = before * (rng.random(n) >= flip)
    return ExampleScores(before), ExampleScores(after)


def _perplexity_pair(rng: np.random.Generator, n: int, factor: float):
    """Texts of 20-80 tokens, per-token NLL ~ 2.5 nats; the tuned model's NLL is the base's times
    ``factor`` plus paired noise, so the true perplexity ratio is exp(2.5 (factor - 1))."""
    tokens = rng.integers(20, 81, n).astype(float)
    per_token = rng.normal(2.5, 0.4, n)
    before = per_token * tokens
    after = (per_token * factor + rng.normal(0.0, 0.1, n)) * tokens
    return (
        ExampleScores(before, tokens, "perplexity"),
        ExampleScores(after, tokens, "perplexity"),
    )


def test_the_interval_covers_the_true_change_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1234)
    trials, covered = 300, {"accuracy": 0, "perplexity": 0}
    truth = {"accuracy": 0.1, "perplexity": math.exp(2.5 * 0.04) - 1.0}  # relative degradation
    for k in range(trials):
        b, a = _accuracy_pair(rng, 400, 0.8, truth["accuracy"])
        c = paired_change(b, a, higher_is_better=True, resamples=500, seed=k)
        covered["accuracy"] += c.low <= truth["accuracy"] <= c.high
        b, a = _perplexity_pair(rng, 300, 1.04)
        c = paired_change(b, a, higher_is_better=False, resamples=500, seed=k)
        covered["perplexity"] += c.low <= truth["perplexity"] <= c.high
    for kind, hits in covered.items():
        # 300 trials: the sd of the observed rate at 95 % is 1.3 points.
        assert 0.91 <= hits / trials <= 0.985, (kind, hits / trials)


def test_identical_models_are_within_and_a_planted_degradation_is_worse() -> None:
    rng = np.random.default_rng(0)
    before, _ = _accuracy_pair(rng, 1000, 0.85, 0.0)
    same = paired_change(before, before, higher_is_better=True)
    assert same.degradation == 0.0
    assert same.low == same.high == 0.0
    assert same.p_value == 1.0
    assert judge(same, tolerance=0.02).verdict == "WITHIN"
    b, a = _accuracy_pair(rng, 1000, 0.85, 0.15)  # 15 % of the correct answers lost
    worse = paired_change(b, a, higher_is_better=True)
    assert judge(worse, tolerance=0.05).verdict == "WORSE"
    assert worse.p_value < 1e-6
    b, a = _perplexity_pair(rng, 500, 1.0)
    assert judge(paired_change(b, a, higher_is_better=False), 0.02).verdict == "WITHIN"
    b, a = _perplexity_pair(rng, 500, 1.1)  # perplexity up about 28 %
    planted = paired_change(b, a, higher_is_better=False)
    assert judge(planted, 0.05).verdict == "WORSE"
    assert planted.test == "permutation"
    assert planted.p_value == pytest.approx(1 / 1001)


def test_a_small_sample_is_unclear_and_says_how_many_examples_would_settle_it() -> None:
    rng = np.random.default_rng(3)
    b, a = _accuracy_pair(rng, 60, 0.8, 0.06)
    change = paired_change(b, a, higher_is_better=True, seed=1)
    judgement = judge(change, tolerance=0.03)
    assert judgement.verdict == "UNCLEAR"
    half = (change.high - change.low) / 2
    gap = abs(change.degradation - 0.03)
    assert judgement.examples_needed == math.ceil(60 * (half / gap) ** 2)
    assert judgement.examples_needed > 60


def test_mcnemar_matches_the_exact_binomial_by_hand() -> None:
    # 10 lost, 2 gained, 88 unchanged: p = 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * 79 / 4096.
    before = np.array([1.0] * 10 + [0.0] * 2 + [1.0] * 80 + [0.0] * 8)
    after = np.array([0.0] * 10 + [1.0] * 2 + [1.0] * 80 + [0.0] * 8)
    change = paired_change(ExampleScores(before), ExampleScores(after), higher_is_better=True)
    assert change.test == "mcnemar"
    assert change.p_value == pytest.approx(2 * 79 / 4096)
    assert change.before == pytest.approx(0.9)
    assert change.after == pytest.approx(0.82)
    assert change.degradation == pytest.approx(0.08 / 0.9)


def test_scores_follow_their_transform_and_the_draw_is_seeded() -> None:
    nll, tokens = np.array([20.0, 30.0]), np.array([10.0, 10.0])
    assert ExampleScores(nll, tokens, "perplexity").score == pytest.approx(math.exp(2.5))
    assert ExampleScores(nll, tokens, "ratio").score == pytest.approx(2.5)
    assert ExampleScores(np.array([1.0, 0.0, 1.0, 1.0])).score == 0.75
    rng = np.random.default_rng(5)
    b, a = _perplexity_pair(rng, 200, 1.02)
    first = paired_change(b, a, higher_is_better=False, seed=7)
    assert paired_change(b, a, higher_is_better=False, seed=7) == first
    assert paired_change(b, a, higher_is_better=False, seed=8) != first
    again = ExampleScores.from_json(b.to_json())
    assert np.array_equal(again.values, b.values)
    assert again.transform == "perplexity"


@pytest.mark.parametrize(
    ("before", "after", "message"),
    [
        (ExampleScores(np.ones(3)), ExampleScores(np.ones(4)), "same examples: 3 before, 4 after"),
        (
            ExampleScores(np.ones(2)),
            ExampleScores(np.ones(2), np.ones(2), "ratio"),
            "same kind",
        ),
    ],
)
def test_unpaired_scores_are_refused(
    before: ExampleScores, after: ExampleScores, message: str
) -> None:
    with pytest.raises(RetainError, match=message):
        paired_change(before, after, higher_is_better=True)


def test_bad_example_scores_are_refused() -> None:
    with pytest.raises(RetainError, match="finite"):
        ExampleScores(np.array([1.0, math.nan]))
    with pytest.raises(RetainError, match="needs per-example weights"):
        ExampleScores(np.ones(2), None, "perplexity")
    with pytest.raises(RetainError, match="one weight per example"):
        ExampleScores(np.ones(2), np.ones(3), "ratio")


def test_an_undefined_interval_is_unclear() -> None:
    change = PairedChange(0.0, 0.0, math.nan, math.nan, math.nan, 0.95, 1.0, "mcnemar", 5, 10)
    assert judge(change, 0.05).verdict == "UNCLEAR"
