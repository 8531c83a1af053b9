"""The forgetting budget tunes EWC's strength online so forgetting ends near the stated budget."""

from __future__ import annotations

import copy
import math
from pathlib import Path

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
from retain.training.budget import ForgettingBudget, next_strength
from retain.training.loop import TrainConfig, train_task

BUDGET = 0.10
SMALL, HUGE = 1.0, 1e4  # measured: final degradation 0.475 and -0.009 (budget run: 0.093)
CONFIG = TrainConfig(lr=3e-3, epochs=3)


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
    setup: tuple[list[TaskSplit], MLP], strategy_of: type[Strategy] | None, strength: float
) -> tuple[float, float, MLP, Strategy]:
    """Train task 1 from the task-0 model; (task-0 relative degradation, task-1 accuracy)."""
    tasks, base = setup
    model = copy.deepcopy(base)
    before = task_accuracy(model, tasks[0].test)
    strategy: Strategy = _ewc(model, tasks, strength)
    if strategy_of is ForgettingBudget:
        strategy = ForgettingBudget(strategy, _suite(tasks), BUDGET, every=5, gain=1.0)
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
    with pytest.raises(RetainError, match=r"cannot tune 'replay'.*\['ewc', 'l2sp'\]"):
        ForgettingBudget(build_strategy("replay"), suite, BUDGET)
    for bad in (0.0, -0.1):
        with pytest.raises(RetainError, match="max_degradation must be > 0"):
            ForgettingBudget(EWC(), suite, bad)
    with pytest.raises(RetainError, match="every must be an integer >= 1"):
        ForgettingBudget(EWC(), suite, BUDGET, every=0)
