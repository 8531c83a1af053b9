"""The forgetting budget tunes EWC's strength online so forgetting ends near the stated budget.

Both control laws are checked against hand-computed values (multiplicative: ``next_strength``; PI
on ``log s`` with a clamped integral: ``pi_strength``), the PI law with ``k_p = 0`` against the
multiplicative law, and the wrapper end to end on permuted digits.
"""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from retain.assets.mlp import MLP
from retain.data.permuted import TaskSplit, permuted_image_tasks
from retain.errors import RetainError
from retain.evaluation.suite import EvalSuite
from retain.evaluation.task_accuracy import task_accuracy
from retain.evaluation.task_probe import TaskAccuracyProbe
from retain.strategies.base import Strategy, build_strategy
from retain.strategies.chain import chain
from retain.strategies.ewc import EWC
from retain.strategies.l2sp import L2SP
from retain.strategies.state import load_strategy_state, save_strategy_state
from retain.training.budget import ForgettingBudget, next_strength, pi_strength
from retain.training.loop import TrainConfig, train_task

BUDGET = 0.10
SMALL, HUGE = 1.0, 1e4  # measured: final degradation 0.475 and -0.009 (budget run: 0.093)
LO, HI = 1e-6, 1e9  # the budget's default strength clip
CONFIG = TrainConfig(lr=3e-3, batch_size=32, epochs=3)


@pytest.fixture(scope="module")
def setup() -> tuple[list[TaskSplit], MLP]:
    """Two permuted-digits tasks and an MLP trained plainly on task 0."""
    tasks = permuted_image_tasks("digits", 2, seed=0)
    torch.manual_seed(0)
    model = MLP(64, [32], 10)
    train_task(model, tasks[0].train, None, CONFIG)
    return tasks, model


def _suite(tasks: list[TaskSplit]) -> EvalSuite:
    return EvalSuite("old", [TaskAccuracyProbe("task0", tasks[0].test)])


def _ewc(model: MLP, tasks: list[TaskSplit], strength: float) -> EWC:
    """EWC holding task 0's Fisher, estimated on the task-0 model (as at the end of task 0)."""
    ewc = EWC(strength=strength)
    ewc.on_task_end(model, tasks[0].train)
    return ewc


def _task1(
    setup: tuple[list[TaskSplit], MLP],
    strategy_of: type[Strategy] | None,
    strength: float,
    **budget_args: Any,
) -> tuple[float, float, MLP, Strategy]:
    """Train task 1 from the task-0 model; (task-0 relative degradation, task-1 accuracy)."""
    tasks, base = setup
    model = copy.deepcopy(base)
    before = task_accuracy(model, tasks[0].test)
    strategy: Strategy = _ewc(model, tasks, strength)
    if strategy_of is ForgettingBudget:
        budget_args = budget_args or {"gain": 1.0}
        strategy = ForgettingBudget(strategy, _suite(tasks), BUDGET, every=5, **budget_args)
    train_task(model, tasks[1].train, chain(strategy), CONFIG)
    after = task_accuracy(model, tasks[0].test)
    return (before - after) / before, task_accuracy(model, tasks[1].test), model, strategy


def test_budget_lands_near_the_budget_where_fixed_strengths_miss(
    setup: tuple[list[TaskSplit], MLP],
) -> None:
    small_d, small_acc, _, _ = _task1(setup, None, SMALL)
    huge_d, huge_acc, _, _ = _task1(setup, None, HUGE)
    budget_d, budget_acc, _, budget = _task1(setup, ForgettingBudget, SMALL)
    assert small_d > 2 * BUDGET  # measured 0.475: a small fixed strength overshoots
    assert huge_d < BUDGET / 3  # measured -0.009: a huge one stays far inside...
    assert 0.0 <= budget_d <= 1.3 * BUDGET  # measured 0.093
    assert budget_acc > huge_acc + 0.15  # measured 0.756 vs 0.406: ...at task 1's expense
    assert small_acc > budget_acc  # forgetting less costs some plasticity (0.864 vs 0.756)
    assert isinstance(budget, ForgettingBudget)
    assert len(budget.history) == 135 // 5
    assert max(h["strength"] for h in budget.history) > 10 * SMALL  # it raised the penalty


def test_control_law_exact_values() -> None:
    assert next_strength(3.0, 0.1, 0.1, 1.0, 1e-6, 1e9) == 3.0
    assert next_strength(3.0, 0.2, 0.1, 0.7, 1e-6, 1e9) == pytest.approx(3.0 * math.exp(0.7))
    assert next_strength(3.0, 0.0, 0.1, 1.0, 1e-6, 1e9) == pytest.approx(3.0 / math.e)
    assert next_strength(3.0, 1.1, 0.1, 1.0, 1e-6, 100.0) == 100.0  # 3 e^10 clipped
    assert next_strength(3.0, -0.9, 0.1, 1.0, 0.5, 100.0) == 0.5  # 3 e^-10 clipped
    assert next_strength(3.0, math.inf, 0.1, 1.0, 0.5, 100.0) == 100.0


def test_budget_that_never_triggers_trains_exactly_like_its_target(
    setup: tuple[list[TaskSplit], MLP],
) -> None:
    tasks, base = setup
    plain, wrapped = copy.deepcopy(base), copy.deepcopy(base)
    train_task(plain, tasks[1].train, chain(_ewc(plain, tasks, 10.0)), CONFIG)
    budget = ForgettingBudget(_ewc(wrapped, tasks, 10.0), _suite(tasks), BUDGET, every=10_000)
    train_task(wrapped, tasks[1].train, chain(budget), CONFIG)
    assert budget.history == []
    assert budget.strength == 10.0
    for (name, a), b in zip(plain.state_dict().items(), wrapped.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_zero_strength_restarts_from_one(setup: tuple[list[TaskSplit], MLP]) -> None:
    tasks, base = setup
    model = copy.deepcopy(base)
    budget = ForgettingBudget(_ewc(model, tasks, 0.0), _suite(tasks), BUDGET, every=1)
    budget.on_task_start(model, tasks[1].train)
    budget.on_step(1, model)  # unchanged weights: d = 0, so s = 1 · e^-1
    assert budget.history[0]["degradation"] == 0.0
    assert budget.strength == pytest.approx(math.exp(-1.0))


def test_state_round_trip(setup: tuple[list[TaskSplit], MLP], tmp_path: Path) -> None:
    tasks, _base = setup
    _, _, model, budget = _task1(setup, ForgettingBudget, SMALL)
    assert isinstance(budget, ForgettingBudget)
    path = save_strategy_state(budget, tmp_path / "budget.safetensors")
    fresh = ForgettingBudget(EWC(strength=123.0), _suite(tasks), BUDGET)
    load_strategy_state(fresh, path)
    assert fresh.strength == budget.strength
    assert fresh.history == budget.history
    assert torch.equal(fresh.penalty(model), budget.penalty(model))  # type: ignore[arg-type]
    with pytest.raises(RetainError, match="unknown key"):
        fresh.load_state_dict({"bogus": 1})


def test_l2sp_target_tunes_alpha(setup: tuple[list[TaskSplit], MLP]) -> None:
    tasks, _base = setup
    budget = ForgettingBudget(L2SP(alpha=0.5), _suite(tasks), BUDGET)
    budget.strength = 2.0
    assert budget.target.alpha == 2.0  # type: ignore[attr-defined]


def test_errors(setup: tuple[list[TaskSplit], MLP]) -> None:
    tasks, _ = setup
    suite = _suite(tasks)
    with pytest.raises(RetainError, match=r"cannot tune 'replay'.*\['ewc', 'l2sp', 'mas'\]"):
        ForgettingBudget(build_strategy("replay"), suite, BUDGET)
    for bad in (0.0, -0.1):
        with pytest.raises(RetainError, match="max_degradation must be > 0"):
            ForgettingBudget(EWC(), suite, bad)
    with pytest.raises(RetainError, match="every must be an integer >= 1"):
        ForgettingBudget(EWC(), suite, BUDGET, every=0)


def test_pi_law_exact_values() -> None:
    # e = (0.2 - 0.1)/0.1 = 1: I = 1, log s = ln 1 + 0.5·1 + 0.25·1
    s, integral = pi_strength(0.0, 0.2, 0.1, 1.0, 0.5, 0.25, LO, HI)
    assert s == pytest.approx(math.exp(0.75))
    assert integral == pytest.approx(1.0)
    # s_0 = 3, k_p = 1, k_i = 0.5; d = 0.3, 0.1, 0.0 give e = 2, 0, -1 and I = 2, 2, 1:
    # s = 3·e^(2 + 1), 3·e^(0 + 1), 3·e^(-1 + 0.5)
    expected = [(3 * math.exp(3.0), 2.0), (3 * math.e, 2.0), (3 * math.exp(-0.5), 1.0)]
    integral = 0.0
    for d, (want_s, want_i) in zip([0.3, 0.1, 0.0], expected, strict=True):
        s, integral = pi_strength(integral, d, 0.1, 3.0, 1.0, 0.5, LO, HI)
        assert s == pytest.approx(want_s, rel=1e-12)
        assert integral == pytest.approx(want_i, rel=1e-12)
    # d = inf saturates at hi with the integral at its ceiling ln(hi / s_0) / k_i
    s, integral = pi_strength(0.0, math.inf, 0.1, 2.0, 1.0, 0.5, LO, 100.0)
    assert s == 100.0
    assert integral == pytest.approx(math.log(50.0) / 0.5)
    with pytest.raises(RetainError, match="NaN degradation"):
        pi_strength(0.0, math.nan, 0.1, 1.0, 1.0, 0.5, LO, HI)


def test_pi_without_proportional_term_is_the_multiplicative_law() -> None:
    rng = random.Random(0)
    mixed = [rng.choice([0.0, 0.05, 0.1, 0.15, 0.3]) for _ in range(100)]
    degradations = [2.0] * 5 + [0.0] * 20 + mixed  # up into hi, down into lo, then noise
    lo, hi = 0.01, 500.0
    mult, pi, integral = 3.0, 3.0, 0.0
    clipped = set()
    for d in degradations:
        mult = next_strength(mult, d, 0.1, 0.7, lo, hi)
        pi, integral = pi_strength(integral, d, 0.1, 3.0, 0.0, 0.7, lo, hi)
        assert pi == pytest.approx(mult, rel=1e-9)
        clipped |= {mult} & {lo, hi}
    assert clipped == {lo, hi}  # the comparison covered both clips


def test_pi_anti_windup_leaves_the_bound_at_the_first_opposite_error() -> None:
    s0, lo, hi = 1.0, 1e-3, 10.0
    integral = 0.0
    for _ in range(10):  # e = +1 ten times: an unclamped integral would reach 10
        s, integral = pi_strength(integral, 0.2, 0.1, s0, 0.0, 1.0, lo, hi)
    assert s == hi
    assert integral == pytest.approx(math.log(10.0))  # clamped: exactly what saturates s
    s, integral = pi_strength(integral, 0.0, 0.1, s0, 0.0, 1.0, lo, hi)  # e = -1
    assert s == pytest.approx(hi / math.e)  # unclamped: e^(10 - 1) clipped, still 10
    for _ in range(20):  # e = -1 twenty times: floor ln(lo) = -6.91, not -20
        s, integral = pi_strength(integral, 0.0, 0.1, s0, 0.0, 1.0, lo, hi)
    assert s == pytest.approx(lo)
    assert integral == pytest.approx(math.log(lo))
    s, _ = pi_strength(integral, 0.2, 0.1, s0, 0.5, 1.0, lo, hi)  # e = +1 with k_p = 0.5
    assert s == pytest.approx(lo * math.exp(1.0 + 0.5))


def test_pi_budget_lands_near_the_budget(setup: tuple[list[TaskSplit], MLP]) -> None:
    d, acc, _, budget = _task1(setup, ForgettingBudget, SMALL, controller="pi")  # k_p = k_i = 0.5
    assert 0.0 <= d <= 1.3 * BUDGET  # measured 0.108 (fixed strength 1: 0.475)
    assert acc > 0.7  # measured 0.747 (fixed strength 1e4: 0.406)
    assert isinstance(budget, ForgettingBudget)
    assert budget.reference == SMALL
    assert len(budget.history) == 135 // 5
    assert max(h["strength"] for h in budget.history) > 10 * SMALL
    # the wrapper applied exactly the pure law to the degradations it measured
    integral = 0.0
    for h in budget.history:
        s, integral = pi_strength(integral, h["degradation"], BUDGET, SMALL, 0.5, 0.5, LO, HI)
        assert (h["strength"], h["integral"]) == (s, integral)
    assert budget.integral == integral


def test_pi_state_round_trip_resumes_identically(
    setup: tuple[list[TaskSplit], MLP], tmp_path: Path
) -> None:
    tasks, base = setup
    noisy = copy.deepcopy(base)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))

    def budget(strength: float) -> ForgettingBudget:
        return ForgettingBudget(
            EWC(strength=strength), _suite(tasks), BUDGET, every=1, controller="pi"
        )

    first = budget(2.0)
    first.on_task_start(base, tasks[1].train)  # baseline: the task-0 model
    for step, model in enumerate([noisy, noisy, base], start=1):
        first.on_step(step, model)
    assert first.history[0]["degradation"] > 2 * BUDGET
    path = save_strategy_state(first, tmp_path / "pi.safetensors")
    resumed, unresumed = budget(123.0), budget(first.strength)
    load_strategy_state(resumed, path)
    assert (resumed.strength, resumed.integral, resumed.reference) == (
        first.strength,
        first.integral,
        2.0,
    )
    assert resumed.suite.baseline is not None  # restored from the file, not re-measured
    unresumed.suite.set_baseline(resumed.suite.baseline)
    for step, model in enumerate([noisy, base, noisy], start=4):
        for b in (first, resumed, unresumed):
            b.on_step(step, model)
        assert resumed.strength == first.strength
    assert resumed.history == first.history
    assert unresumed.strength != pytest.approx(first.strength)  # the integral mattered


def test_controller_arguments_are_checked(setup: tuple[list[TaskSplit], MLP]) -> None:
    tasks, _ = setup
    suite = _suite(tasks)
    with pytest.raises(RetainError, match="controller must be 'multiplicative' or 'pi'"):
        ForgettingBudget(EWC(), suite, BUDGET, controller="pid")  # type: ignore[arg-type]
    with pytest.raises(RetainError, match="gain does not apply to controller='pi'"):
        ForgettingBudget(EWC(), suite, BUDGET, controller="pi", gain=1.0)
    with pytest.raises(RetainError, match="integral_gain does not apply to controller='multi"):
        ForgettingBudget(EWC(), suite, BUDGET, integral_gain=1.0)
    with pytest.raises(RetainError, match="integral_gain must be > 0"):
        ForgettingBudget(EWC(), suite, BUDGET, controller="pi", integral_gain=0.0)
    with pytest.raises(RetainError, match="proportional_gain must be >= 0"):
        ForgettingBudget(EWC(), suite, BUDGET, controller="pi", proportional_gain=-1.0)
    with pytest.raises(RetainError, match="max_strength > 0"):
        ForgettingBudget(EWC(), suite, BUDGET, min_strength=0.0, max_strength=0.0)
    pi = ForgettingBudget(EWC(), suite, BUDGET, controller="pi")
    assert (pi.proportional_gain, pi.integral_gain) == (0.5, 0.5)
    assert "controller='pi', proportional_gain=0.5, integral_gain=0.5" in pi.describe()
