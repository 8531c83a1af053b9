"""The forgetting monitor stops over budget, restores the best weights and disturbs nothing."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from retain.assets.mlp import MLP
from retain.data.permuted import TaskSplit, permuted_image_tasks
from retain.data.task import Task
from retain.errors import RetainError
from retain.evaluation.suite import EvalSuite
from retain.evaluation.task_accuracy import task_accuracy
from retain.evaluation.task_probe import TaskAccuracyProbe
from retain.strategies.chain import Chain
from retain.training.hf import RetainCallback
from retain.training.loop import TaskLog, TrainConfig, make_optimizer, train_task
from retain.training.monitor import ForgettingMonitor, MonitorConfig
from training_helpers import random_task, tiny_classifier, trainer_args

BUDGET = 0.1
TASK1 = TrainConfig(lr=3e-3, batch_size=32, epochs=1)


@pytest.fixture(scope="module")
def digits() -> tuple[list[TaskSplit], MLP]:
    """Two permuted-digits tasks and an MLP trained on the first (test accuracy ~0.94)."""
    tasks = permuted_image_tasks("digits", 2, seed=0)
    torch.manual_seed(0)
    model = MLP(64, [32], 10)
    train_task(model, tasks[0].train, None, TrainConfig(lr=1e-2, batch_size=32, epochs=3))
    assert task_accuracy(model, tasks[0].test) > 0.9
    return tasks, model


def _monitor(tasks: list[TaskSplit], task_score: bool = True, **config: Any) -> ForgettingMonitor:
    suite = EvalSuite("prior", [TaskAccuracyProbe("task0", tasks[0].test)])
    score = (lambda m: task_accuracy(m, tasks[1].test)) if task_score else None
    return ForgettingMonitor(suite, MonitorConfig(**config), task_score=score)


def _relative_degradation(before: float, after: float) -> float:
    return (before - after) / before  # accuracy: higher is better


def _run(
    digits: tuple[list[TaskSplit], MLP], monitor: ForgettingMonitor | None
) -> tuple[MLP, TaskLog]:
    tasks, trained = digits
    model = copy.deepcopy(trained)
    return model, train_task(model, tasks[1].train, None, TASK1, monitor=monitor)


def test_stops_at_first_over_budget_evaluation_and_restores_best(
    digits: tuple[list[TaskSplit], MLP],
) -> None:
    tasks, trained = digits
    base = task_accuracy(trained, tasks[0].test)
    model, log = _run(digits, _monitor(tasks, max_degradation=BUDGET, eval_every=5))
    result = log.monitor
    assert result is not None
    assert log.stopped
    assert result.stopped
    history = result.history
    assert [h.step for h in history] == list(range(0, log.steps + 1, 5))
    assert log.steps < len(tasks[1].train.examples) // 32  # cut short of the epoch
    # every recorded degradation agrees with an independent formula on the recorded scores
    for h in history:
        expected = _relative_degradation(base, h.scores["task0"])
        assert h.degradation["task0"] == pytest.approx(expected, abs=1e-12)
        assert h.within_budget == (expected <= BUDGET)
    # patience 1: the stop is the first over-budget evaluation
    assert history[-1].worst_degradation > BUDGET
    assert all(h.within_budget for h in history[:-1])
    assert log.stop_reason == result.reason
    assert "'task0'" in log.stop_reason
    assert f"at step {log.steps}" in log.stop_reason
    # the best is the within-budget evaluation with the highest new-task score
    within = [h for h in history if h.within_budget]
    best = max(within, key=lambda h: (h.task_score, h.step))
    assert result.best_step == best.step
    assert result.restored
    after = task_accuracy(model, tasks[0].test)
    assert after == best.scores["task0"]
    assert _relative_degradation(base, after) <= BUDGET
    assert task_accuracy(model, tasks[1].test) == best.task_score
    assert result.final_worst_degradation == best.worst_degradation
    json.dumps(result.to_json())  # JSON-serialisable

    # patience 2: same trajectory (evaluation disturbs nothing), stops at two in a row
    _, log2 = _run(digits, _monitor(tasks, max_degradation=BUDGET, eval_every=5, patience=2))
    assert log2.monitor is not None
    assert log2.stopped
    history2 = log2.monitor.history
    assert history2[: len(history)] == history
    over = [not h.within_budget for h in history2]
    first_pair = next(i for i in range(1, len(over)) if over[i - 1] and over[i])
    assert len(history2) == first_pair + 1
    if over[len(history)]:  # the next evaluation was over budget too
        assert log2.steps == log.steps + 5
    assert "for 2 evaluation(s)" in log2.stop_reason


def test_huge_budget_never_stops_and_changes_no_weight(
    digits: tuple[list[TaskSplit], MLP],
) -> None:
    torch.manual_seed(123)
    plain, plain_log = _run(digits, None)
    plain_rng = torch.rand(3)
    torch.manual_seed(123)
    monitored, log = _run(
        digits, _monitor(digits[0], task_score=False, max_degradation=1e9, eval_every=5)
    )
    assert torch.equal(torch.rand(3), plain_rng)  # the global RNG was not consumed
    assert log.monitor is not None
    assert not log.stopped
    assert not log.monitor.stopped
    assert log.monitor.reason == "completed"
    assert not log.monitor.restored
    assert log.losses == plain_log.losses
    steps = [h.step for h in log.monitor.history]
    assert steps == [*range(0, log.steps, 5), log.steps]  # plus the end of the task
    assert log.monitor.best_step == log.steps
    for p, q in zip(plain.state_dict().values(), monitored.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_restore_best_false_keeps_the_last_weights(digits: tuple[list[TaskSplit], MLP]) -> None:
    tasks = digits[0]
    model, log = _run(
        digits, _monitor(tasks, max_degradation=BUDGET, eval_every=5, restore_best=False)
    )
    assert log.monitor is not None
    assert log.stopped
    assert not log.monitor.restored
    last = log.monitor.history[-1]
    assert task_accuracy(model, tasks[0].test) == last.scores["task0"]
    assert log.monitor.final_worst_degradation == last.worst_degradation > BUDGET


def test_eval_every_zero_checks_only_at_the_end(digits: tuple[list[TaskSplit], MLP]) -> None:
    _, log = _run(digits, _monitor(digits[0], max_degradation=1e9, eval_every=0))
    assert log.monitor is not None
    assert [h.step for h in log.monitor.history] == [0, log.steps]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"max_degradation": -0.1}, "max_degradation"),
        ({"max_degradation": float("nan")}, "max_degradation"),
        ({"patience": 0}, "patience"),
        ({"eval_every": -1}, "eval_every"),
    ],
)
def test_config_validation(config: dict[str, Any], message: str) -> None:
    with pytest.raises(RetainError, match=message):
        MonitorConfig(**config)


def test_check_before_start_is_refused() -> None:
    suite = EvalSuite("s", [TaskAccuracyProbe("a", random_task("a"))])
    with pytest.raises(RetainError, match="start"):
        ForgettingMonitor(suite).check(tiny_classifier(), 1)


class LogCapture(TrainerCallback):
    """Keeps every ``logs`` dict it is passed (it runs after RetainCallback)."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        self.logs.append(dict(logs or {}))


def test_trainer_stops_logs_figures_and_restores_best(tmp_path: Path) -> None:
    task = random_task("a", n=48, seed=0)
    # the probe wants other labels for the same inputs: learning the task forgets it
    shifted = [{**ex, "labels": (ex["labels"] + 1) % 3} for ex in task.examples]
    probe = TaskAccuracyProbe("anti", Task("anti", shifted))
    model = tiny_classifier()
    start = copy.deepcopy(model)
    monitor = ForgettingMonitor(EvalSuite("s", [probe]), MonitorConfig(0.25, eval_every=2))
    strategies = Chain([])
    config = TrainConfig(lr=3e-3, batch_size=8, epochs=4, shuffle=False)
    data = strategies.begin_task(model, task)
    capture, retain_cb = LogCapture(), RetainCallback(strategies, task, monitor)
    trainer = Trainer(
        model=model,
        args=trainer_args(tmp_path, config),
        train_dataset=data.examples,
        data_collator=data.collate,
        optimizers=(make_optimizer(model, strategies, config), None),
        callbacks=[retain_cb, capture],
    )
    trainer.train()
    result = retain_cb.result
    assert result is not None
    assert result.stopped
    assert trainer.state.global_step < trainer.state.max_steps == 24
    assert trainer.state.global_step == result.history[-1].step
    # the figures of every check reached the logs passed to later callbacks and log_history
    logged = [entry for entry in capture.logs if "monitor/worst_degradation" in entry]
    assert [e["monitor/step"] for e in logged] == [h.step for h in result.history[1:]]
    history = [e for e in trainer.state.log_history if "monitor/anti/degradation" in e]
    assert len(history) == len(logged)
    assert history[-1]["monitor/anti/degradation"] == result.history[-1].degradation["anti"]
    # the best within budget (the latest, no task score) is back in the model: the weights of
    # the plain loop stopped at that step (the loop and the Trainer take identical steps)
    best = [h for h in result.history if h.within_budget][-1]
    assert result.best_step == best.step > 0
    assert result.restored
    assert task_accuracy(model, probe.task) == best.scores["anti"]
    train_task(start, task, None, replace(config, max_steps=best.step))
    for (name, p), q in zip(start.named_parameters(), model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), name
