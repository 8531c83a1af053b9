"""Metrics against hand-computed matrices (expected numbers are worked out by hand in comments)."""

from __future__ import annotations

import doctest
import json
import math
import warnings
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import retain.metrics
import retain.metrics_capability
from retain.errors import RetainError
from retain.metrics import (
    Degradation,
    average_accuracy,
    average_forgetting,
    average_forgetting_first_last,
    backward_transfer,
    degradation,
    forgetting,
    forgetting_first_last,
    forward_transfer,
    perplexity_ratio,
)

NAN = math.nan

# R[t][i] = score on task i after training task t.
R3 = [
    [0.9, 0.3, 0.2],
    [0.7, 0.8, 0.4],
    [0.6, 0.75, 0.85],
]
B3 = [0.5, 0.25, 0.1]


def test_three_tasks_all_metrics() -> None:
    # ACC = (0.6 + 0.75 + 0.85) / 3 = 2.2 / 3
    assert average_accuracy(R3) == pytest.approx(2.2 / 3)
    # BWT = ((0.6 - 0.9) + (0.75 - 0.8)) / 2 = (-0.3 - 0.05) / 2
    assert backward_transfer(R3) == pytest.approx(-0.175)
    # FWT = ((R[0,1] - b1) + (R[1,2] - b2)) / 2 = ((0.3 - 0.25) + (0.4 - 0.1)) / 2
    assert forward_transfer(R3, B3) == pytest.approx(0.175)
    # F_0 = max(0.9, 0.7) - 0.6 = 0.3; F_1 = max(0.3, 0.8) - 0.75 = 0.05
    np.testing.assert_allclose(forgetting(R3), [0.3, 0.05])
    np.testing.assert_allclose(forgetting(R3, since_learned=True), [0.3, 0.05])
    assert average_forgetting(R3) == pytest.approx(0.175)
    np.testing.assert_allclose(forgetting_first_last(R3), [0.3, 0.05])
    assert average_forgetting_first_last(R3) == pytest.approx(0.175)


def test_accepts_numpy_and_returns_plain_floats() -> None:
    matrix = np.array(R3, dtype=np.float32)
    for value in (
        average_accuracy(matrix),
        backward_transfer(matrix),
        forward_transfer(matrix, np.array(B3)),
        average_forgetting(matrix),
        average_forgetting_first_last(matrix),
    ):
        assert type(value) is float
    assert forgetting(matrix).dtype == np.float64


def test_two_tasks() -> None:
    r = [[0.5, 0.1], [0.4, 0.6]]
    assert average_accuracy(r) == pytest.approx(0.5)  # (0.4 + 0.6) / 2
    assert backward_transfer(r) == pytest.approx(-0.1)  # 0.4 - 0.5
    assert forward_transfer(r, [NAN, 0.2]) == pytest.approx(-0.1)  # 0.1 - 0.2
    np.testing.assert_allclose(forgetting(r), [0.1])  # 0.5 - 0.4
    assert average_forgetting(r) == pytest.approx(0.1)


def test_one_task_gives_nan_without_error_or_warning() -> None:
    r = [[0.7]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert average_accuracy(r) == pytest.approx(0.7)
        assert math.isnan(backward_transfer(r))
        assert math.isnan(forward_transfer(r, [0.1]))
        assert forgetting(r).shape == (0,)
        assert forgetting(r, since_learned=True).shape == (0,)
        assert forgetting_first_last(r).shape == (0,)
        assert math.isnan(average_forgetting(r))
        assert math.isnan(average_forgetting_first_last(r))


def test_all_nan_terms_give_nan_without_warning() -> None:
    r = [[NAN, NAN], [NAN, NAN]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(average_accuracy(r))
        assert math.isnan(backward_transfer(r))
        assert math.isnan(forward_transfer(r, [NAN, NAN]))
        assert np.isnan(forgetting(r)).all()
        assert math.isnan(average_forgetting(r))
        assert math.isnan(average_forgetting_first_last(r))


def test_nan_before_a_task_is_learned_changes_nothing_here() -> None:
    # R[0][2] (task 2 before any training on it) enters none of the formulas for T = 3.
    r = [row[:] for row in R3]
    r[0][2] = NAN
    assert backward_transfer(r) == pytest.approx(-0.175)
    assert forward_transfer(r, B3) == pytest.approx(0.175)
    np.testing.assert_allclose(forgetting(r), [0.3, 0.05])


def test_nan_in_final_row_skips_that_task() -> None:
    r = [row[:] for row in R3]
    r[2][0] = NAN
    assert average_accuracy(r) == pytest.approx(0.8)  # (0.75 + 0.85) / 2
    assert backward_transfer(r) == pytest.approx(-0.05)  # only task 1: 0.75 - 0.8
    np.testing.assert_allclose(forgetting(r), [NAN, 0.05])
    assert average_forgetting(r) == pytest.approx(0.05)
    np.testing.assert_allclose(forgetting_first_last(r), [NAN, 0.05])
    assert average_forgetting_first_last(r) == pytest.approx(0.05)


def test_nan_on_diagonal_and_baseline() -> None:
    r = [row[:] for row in R3]
    r[1][1] = NAN
    assert backward_transfer(r) == pytest.approx(-0.3)  # only task 0: 0.6 - 0.9
    # max skips NaN: F_1 = max(0.3) - 0.75 over t in {0, 1}; since learned only t = 1 (NaN).
    np.testing.assert_allclose(forgetting(r), [0.3, -0.45])
    np.testing.assert_allclose(forgetting(r, since_learned=True), [0.3, NAN])
    np.testing.assert_allclose(forgetting_first_last(r), [0.3, NAN])
    # b[2] NaN: only the task-1 term 0.3 - 0.25 is left.
    assert forward_transfer(R3, [0.5, 0.25, NAN]) == pytest.approx(0.05)


R4 = [
    [50, 40, 85, 20],
    [45, 70, 35, 25],
    [60, 65, 80, 30],
    [55, 50, 60, 90],
]


def test_forgetting_variants_differ() -> None:
    # any step:      [max(50, 45, 60) - 55, max(40, 70, 65) - 50, max(85, 35, 80) - 60]
    np.testing.assert_allclose(forgetting(R4), [5, 20, 25])
    assert average_forgetting(R4) == pytest.approx(50 / 3)
    # since learned: [max(50, 45, 60) - 55, max(70, 65) - 50, max(80) - 60]
    np.testing.assert_allclose(forgetting(R4, since_learned=True), [5, 20, 20])
    assert average_forgetting(R4, since_learned=True) == pytest.approx(15)
    # first - last:  [50 - 55, 70 - 50, 80 - 60]
    np.testing.assert_allclose(forgetting_first_last(R4), [-5, 20, 20])
    assert average_forgetting_first_last(R4) == pytest.approx(35 / 3)
    assert backward_transfer(R4) == pytest.approx(-35 / 3)


def test_lower_is_better_flips_sign() -> None:
    ppl = [[10.0, 30.0], [12.0, 8.0]]
    # Perplexity on task 0 rose 10 -> 12: BWT -2, forgetting +2.
    assert backward_transfer(ppl, higher_is_better=False) == pytest.approx(-2.0)
    np.testing.assert_allclose(forgetting(ppl, higher_is_better=False), [2.0])
    assert average_forgetting_first_last(ppl, higher_is_better=False) == pytest.approx(2.0)
    # Task 1 perplexity 25 for the starting model, 30 after task 0: FWT = -(30 - 25).
    assert forward_transfer(ppl, [NAN, 25.0], higher_is_better=False) == pytest.approx(-5.0)
    # Raw mean, no orientation.
    assert average_accuracy(ppl) == pytest.approx(10.0)


def test_first_last_mean_is_exactly_minus_bwt() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        n_tasks = int(rng.integers(1, 8))
        r = rng.normal(size=(n_tasks, n_tasks)) * 10
        if trial % 2:
            r[rng.random(r.shape) < 0.2] = np.nan
        for higher in (True, False):
            bwt = backward_transfer(r, higher_is_better=higher)
            mean_fl = average_forgetting_first_last(r, higher_is_better=higher)
            assert (math.isnan(bwt) and math.isnan(mean_fl)) or mean_fl == -bwt
            # The max-based forgetting is never below first-minus-last where both are defined.
            chaudhry = forgetting(r, higher_is_better=higher)
            first_last = forgetting_first_last(r, higher_is_better=higher)
            both = ~np.isnan(first_last)
            assert (chaudhry[both] >= first_last[both]).all()


@pytest.mark.parametrize(
    ("scores", "fragment"),
    [
        ([[1, 2, 3], [4, 5, 6]], "got shape (2, 3)"),
        ([0.1, 0.2], "got shape (2,)"),
        ([[[1.0]]], "got shape (1, 1, 1)"),
        (np.zeros((0, 0)), "at least one task"),
        ([[1, 2], [3]], "rows of equal length"),
        ([["a", "b"], ["c", "d"]], "numeric"),
    ],
)
def test_bad_matrix_is_a_retain_error(scores: Any, fragment: str) -> None:
    for metric in (average_accuracy, backward_transfer, forgetting, forgetting_first_last):
        with pytest.raises(RetainError, match="score matrix") as info:
            metric(scores)
        assert fragment in str(info.value)
        assert "R[t][i] = score on task i after training task t" in str(info.value)
        assert isinstance(info.value, ValueError)


def test_bad_baseline_and_direction() -> None:
    with pytest.raises(RetainError, match=r"length T = 3, b\[0\] unused\); got shape \(2,\)"):
        forward_transfer(R3, [0.1, 0.2])
    with pytest.raises(RetainError, match=r"got shape \(1, 3\)"):
        forward_transfer(R3, [[0.1, 0.2, 0.3]])
    with pytest.raises(RetainError, match="baseline b must be numeric"):
        forward_transfer(R3, ["x", "y", "z"])
    with pytest.raises(RetainError, match="higher_is_better must be True"):
        backward_transfer(R3, higher_is_better="lower")  # type: ignore[arg-type]


def test_degradation_higher_is_better() -> None:
    d = degradation(0.8, 0.6, higher_is_better=True)
    assert d.change == pytest.approx(-0.2)
    assert d.relative_change == pytest.approx(-0.25)  # -0.2 / 0.8
    assert d.degradation == pytest.approx(0.2)
    assert d.relative_degradation == pytest.approx(0.25)
    assert d.worsened()
    assert d.worsened(tolerance=0.2)
    assert not d.worsened(tolerance=0.3)


def test_degradation_lower_is_better() -> None:
    worse = degradation(10.0, 12.0, higher_is_better=False)
    assert worse.change == pytest.approx(2.0)
    assert worse.degradation == pytest.approx(2.0)
    assert worse.relative_degradation == pytest.approx(0.2)
    assert worse.worsened(tolerance=0.1)
    better = degradation(10.0, 8.0, higher_is_better=False)
    assert better.degradation == pytest.approx(-2.0)
    assert better.relative_degradation == pytest.approx(-0.2)
    assert not better.worsened()
    # A negative tolerance demands an improvement: 5 % better is not the 10 % asked for.
    assert degradation(10.0, 9.5, higher_is_better=False).worsened(tolerance=-0.1)
    assert not better.worsened(tolerance=-0.1)


def test_degradation_negative_and_zero_before() -> None:
    # Log-likelihood -2.0 -> -2.5 (higher is better): 0.5 worse, 25 % of |before|.
    d = degradation(-2.0, -2.5, higher_is_better=True)
    assert d.change == pytest.approx(-0.5)
    assert d.relative_change == pytest.approx(-0.25)
    assert d.degradation == pytest.approx(0.5)
    assert d.relative_degradation == pytest.approx(0.25)
    assert d.worsened(tolerance=0.2)
    zero = degradation(0.0, 0.5, higher_is_better=True)
    assert math.isnan(zero.relative_change)
    assert math.isnan(zero.relative_degradation)
    assert zero.degradation == pytest.approx(-0.5)
    assert not zero.worsened()
    assert degradation(0.0, 0.5, higher_is_better=False).worsened(tolerance=10.0)
    assert not degradation(0.0, 0.0, higher_is_better=False).worsened()


def test_degradation_to_dict_is_json() -> None:
    d = degradation(np.float32(0.0), np.float64(0.5), higher_is_better=True)
    as_dict = d.to_dict()
    assert as_dict == {
        "before": 0.0,
        "after": 0.5,
        "higher_is_better": True,
        "change": 0.5,
        "relative_change": None,
        "degradation": -0.5,
        "relative_degradation": None,
    }
    json.dumps(as_dict, allow_nan=False)
    assert type(d.before) is float


def test_degradation_validation() -> None:
    with pytest.raises(TypeError):
        degradation(1.0, 2.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        degradation(1.0, 2.0, True)  # type: ignore[call-arg]
    with pytest.raises(RetainError, match="higher_is_better must be True"):
        Degradation(before=1.0, after=2.0, higher_is_better="yes")  # type: ignore[arg-type]
    with pytest.raises(RetainError, match="before is NaN"):
        degradation(NAN, 2.0, higher_is_better=True)
    with pytest.raises(RetainError, match="after must be a number"):
        degradation(1.0, "2.0", higher_is_better=True)  # type: ignore[arg-type]
    with pytest.raises(RetainError, match="tolerance must be a fraction"):
        degradation(1.0, 2.0, higher_is_better=True).worsened(tolerance=NAN)


def test_perplexity_ratio() -> None:
    assert perplexity_ratio(8.0, 10.0) == pytest.approx(1.25)
    assert perplexity_ratio(10.0, 8.0) == pytest.approx(0.8)
    assert perplexity_ratio(10.0, math.inf) == math.inf
    for before, after, fragment in [
        (0.0, 10.0, "before_ppl must be a positive, finite"),
        (-1.0, 10.0, "before_ppl must be a positive, finite"),
        (math.inf, 10.0, "before_ppl must be a positive, finite"),
        (10.0, 0.0, "after_ppl must be a positive"),
        (10.0, -2.0, "after_ppl must be a positive"),
        (10.0, NAN, "after_ppl is NaN"),
    ]:
        with pytest.raises(RetainError, match=fragment):
            perplexity_ratio(before, after)


@pytest.mark.parametrize("module", [retain.metrics, retain.metrics_capability])
def test_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
