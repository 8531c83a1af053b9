"""Summary figures, aggregation over seeds and the Pareto front, against hand-worked numbers."""

from __future__ import annotations

import math
from typing import Any

import pytest

from retain.errors import RetainError
from retain.records.run import RunRecord
from retain.report import summary as summaries
from retain.report.summary import forgetting_cost_key, pareto_optimal

NAN = math.nan


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([], []),
        ([(0.3, 0.7)], [True]),  # one point: nothing dominates it
        ([(0.5, 0.5), (0.5, 0.5)], [True, True]),  # duplicates: neither strictly better
        ([(0.5, 0.5), (0.5, 0.5), (0.6, 0.4)], [False, False, True]),  # both dominated
        ([(0.9, 0.3), (0.9, 0.4)], [True, False]),  # tie in x: lower cost wins
        ([(0.8, 0.2), (0.9, 0.2)], [False, True]),  # tie in cost: higher x wins
        ([(0.1, 0.1), (0.2, 0.2), (0.3, 0.3)], [True, True, True]),  # a pure trade-off
        ([(0.9, 0.3), (0.8, 0.1), (0.7, 0.2), (0.9, 0.4)], [True, True, False, False]),
        ([(NAN, 0.0), (0.5, 0.5)], [False, True]),  # NaN: never optimal, dominates nothing
        ([(1.0, NAN), (0.5, 0.5), (0.4, 0.6)], [False, True, False]),
    ],
)
def test_pareto_optimal_hand_worked(
    points: list[tuple[float, float]], expected: list[bool]
) -> None:
    assert pareto_optimal(points) == expected


def _results(
    matrix: list[list[float | None]],
    *,
    relative: list[dict[str, float | None]] | None = None,
    higher_is_better: bool = True,
    seconds: float | None = 42.0,
    variant: str = "naive",
    seed: int = 0,
    strategies: str = "[]",
) -> RunRecord:
    suite = None
    if relative is not None:
        suite = {"name": "s", "baseline": {}, "after": [], "relative_degradation": relative}
    tasks = [f"task {i}" for i in range(max(1, len(matrix)))]
    run = {"matrix": matrix or [[]], "suite": suite, "strategies": strategies, "tasks": tasks}
    run.update(seed=seed, baseline=[], metrics={}, logs=[], config={})
    record = RunRecord.model_validate(
        {
            "name": "hand-made",
            "model": "none",
            "variant": variant,
            "seed": seed,
            "score": {
                "name": "accuracy" if higher_is_better else "perplexity",
                "higher_is_better": higher_is_better,
            },
            "run": run,
            "seconds": seconds,
        }
    )
    record.run.matrix = matrix  # an empty one too, which the type refuses when it is read
    return record


def run_summary(record: RunRecord) -> dict[str, Any]:
    """:func:`retain.report.summary.run_summary` as the JSON it is written as (None where
    undefined)."""
    return summaries.run_summary(record).to_json()


def aggregate(records: list[RunRecord]) -> list[dict[str, Any]]:
    """:func:`retain.report.summary.aggregate` as the JSON it is written as."""
    return [row.to_json() for row in summaries.aggregate(records)]


R = [[0.8, 0.1, 0.2], [0.6, 0.9, None], [0.7, 0.5, 0.6]]


def test_run_summary_hand_computed() -> None:
    relative = [{"a": 0.5, "b": 0.9}, {"a": 0.2}, {"a": 0.03, "b": None, "c": 0.12}]
    summary = run_summary(_results(R, relative=relative))
    assert summary == pytest.approx(
        {
            "new_task_score": (0.8 + 0.9 + 0.6) / 3,
            "average_accuracy": (0.7 + 0.5 + 0.6) / 3,
            "backward_transfer": ((0.7 - 0.8) + (0.5 - 0.9)) / 2,
            # F_0 = max(0.8, 0.6) - 0.7, F_1 = max(0.1, 0.9) - 0.5
            "forgetting": (0.1 + 0.4) / 2,
            "capability_degradation": 0.12,  # the worst after the LAST task only
            "seconds": 42.0,
        }
    )


def test_run_summary_lower_is_better_flips_transfer_not_the_raw_means() -> None:
    summary = run_summary(_results([[3.0, 9.0], [4.5, 2.0]], higher_is_better=False))
    assert summary["new_task_score"] == pytest.approx(2.5)  # raw mean of 3.0 and 2.0
    assert summary["average_accuracy"] == pytest.approx(3.25)
    assert summary["backward_transfer"] == pytest.approx(-1.5)  # perplexity 3 -> 4.5: worse
    assert summary["forgetting"] == pytest.approx(1.5)


def test_run_summary_undefined_figures_are_none() -> None:
    one_task = run_summary(_results([[0.7]], seconds=None))
    assert one_task["new_task_score"] == pytest.approx(0.7)
    for key in ("backward_transfer", "forgetting", "capability_degradation", "seconds"):
        assert one_task[key] is None, key
    unknown = run_summary(_results([[0.5, 0.1], [0.4, 0.6]], relative=[{"a": None}]))
    assert unknown["capability_degradation"] is None
    with pytest.raises(RetainError, match="empty score matrix"):
        run_summary(_results([]))


def test_aggregate_mean_sd_order_and_pareto() -> None:
    runs = [
        # variant b first: rows keep first-seen order
        _results([[0.9, 0.0], [0.3, 0.9]], variant="b", seed=0, strategies="[ewc]"),
        _results([[0.8, 0.0], [0.5, 0.8]], variant="a", seed=0, seconds=10.0),
        _results([[0.6, 0.0], [0.5, 0.6]], variant="a", seed=1, seconds=None),
        _results([[0.5, 0.0], [0.1, 0.7]], variant="c", seed=3),
    ]
    rows = aggregate(runs)
    assert [(r["variant"], r["seeds"], r["n"]) for r in rows] == [
        ("b", [0], 1),
        ("a", [0, 1], 2),
        ("c", [3], 1),
    ]
    assert rows[0]["strategies"] == "[ewc]"
    b, a, c = rows
    # a: new-task scores 0.8 and 0.6 -> mean 0.7, sample sd sqrt(2 * 0.1^2 / 1)
    assert a["new_task_score"]["mean"] == pytest.approx(0.7)
    assert a["new_task_score"]["sd"] == pytest.approx(math.sqrt(0.02))
    # its 95 % interval over 2 seeds: 0.7 ± t(0.975, 1) * 0.1414 / sqrt(2) = 0.7 ± 12.7062 * 0.1
    assert a["new_task_score"]["low"] == pytest.approx(0.7 - 1.270620, abs=1e-6)
    assert a["new_task_score"]["high"] == pytest.approx(0.7 + 1.270620, abs=1e-6)
    # a: forgetting 0.8 - 0.5 = 0.3 and 0.6 - 0.5 = 0.1 -> mean 0.2, sd sqrt(0.02)
    assert a["forgetting"]["mean"] == pytest.approx(0.2)
    assert a["forgetting"]["sd"] == pytest.approx(math.sqrt(0.02))
    assert a["backward_transfer"]["mean"] == pytest.approx(-0.2)
    # the None seed is skipped; one run: sd 0 and no interval
    assert a["seconds"] == {"mean": 10.0, "sd": 0.0, "low": None, "high": None}
    assert b["new_task_score"] == {"mean": 0.9, "sd": 0.0, "low": None, "high": None}
    assert b["forgetting"]["mean"] == pytest.approx(0.6)
    no_suite = {"mean": None, "sd": None, "low": None, "high": None}
    assert a["capability_degradation"] == no_suite  # no suite anywhere
    # Pareto on (new-task score, forgetting): b (0.9, 0.6), a (0.7, 0.2), c (0.6, 0.4).
    # c is dominated by a (higher score, less forgetting); a and b trade off.
    assert [r["pareto"] for r in rows] == [True, True, False]
    assert c["pareto"] is False


def test_pareto_cost_is_capability_degradation_only_when_every_variant_has_it() -> None:
    # Forgetting would favour "x" (0.1 < 0.3), capability degradation favours "y" (0.05 < 0.2);
    # same new-task score, so exactly one is optimal under each cost.
    x = _results([[0.9, 0.0], [0.8, 0.9]], relative=[{"c": 0.2}], variant="x")
    y = _results([[0.9, 0.0], [0.6, 0.9]], relative=[{"c": 0.05}], variant="y")
    rows = aggregate([x, y])
    assert forgetting_cost_key(summaries.aggregate([x, y])) == "capability_degradation"
    assert [r["pareto"] for r in rows] == [False, True]
    y_without_suite = _results([[0.9, 0.0], [0.6, 0.9]], variant="y")
    rows = aggregate([x, y_without_suite])
    assert forgetting_cost_key(summaries.aggregate([x, y_without_suite])) == "forgetting"
    assert [r["pareto"] for r in rows] == [True, False]


def test_aggregate_lower_is_better_scores_negate_plasticity() -> None:
    # Perplexity: new-task 2.0 (p) beats 3.0 (q); equal forgetting -> only p is optimal.
    p = _results([[2.0, 9.0], [2.5, 2.0]], higher_is_better=False, variant="p")
    q = _results([[3.0, 9.0], [3.5, 3.0]], higher_is_better=False, variant="q")
    assert [r["pareto"] for r in aggregate([p, q])] == [True, False]


def test_aggregate_refuses_mixed_scores_and_nothing() -> None:
    with pytest.raises(RetainError, match="different metrics"):
        aggregate([_results([[0.5]]), _results([[3.0]], higher_is_better=False)])
    with pytest.raises(RetainError, match="at least one"):
        aggregate([])


def test_references_are_bounds_off_the_front_and_every_row_is_a_fraction_of_joint() -> None:
    nan = float("nan")
    joint = [_results([[nan, nan], [0.9, 0.7]], variant="joint", seed=s) for s in (0, 1)]
    joint[1].run.matrix[1] = [0.9, 0.9]
    single = _results([[0.95, 0.2], [0.3, 0.85]], variant="single")
    for record, mode in ((joint[0], "joint"), (joint[1], "joint"), (single, "single")):
        record.run.mode = mode
    naive = _results([[0.8, 0.0], [0.5, 0.8]], variant="naive")
    rows = {r["variant"]: r for r in aggregate([naive, *joint, single])}
    # joint: mean of the last row per seed, (0.8 + 0.9) / 2; single: the diagonal's mean
    assert rows["joint"]["average_accuracy"]["mean"] == pytest.approx(0.85)
    assert rows["joint"]["new_task_score"]["mean"] == pytest.approx(0.85)
    assert rows["single"]["average_accuracy"]["mean"] == pytest.approx(0.9)
    for name in ("joint", "single"):
        assert rows[name]["reference"] == name
        assert rows[name]["pareto"] is False
        assert rows[name]["backward_transfer"]["mean"] is None  # nothing came after
    assert rows["naive"]["reference"] is None
    assert rows["naive"]["pareto"] is True  # alone on the front: references do not compete
    assert rows["naive"]["of_joint"] == pytest.approx(0.65 / 0.85)
    assert rows["joint"]["of_joint"] == pytest.approx(1.0)
    assert rows["single"]["of_joint"] == pytest.approx(0.9 / 0.85)
    from retain.report.summary import aggregate as typed
    from retain.report.terminal import comparison_table

    table = comparison_table(typed([naive, *joint, single]))
    lines = table.splitlines()
    assert "of joint" in lines[0]
    assert lines[2].startswith("naive *")
    assert "76.5%" in lines[2]
    assert lines[3].startswith("joint (reference)")
    assert lines[4].startswith("single (reference)")
