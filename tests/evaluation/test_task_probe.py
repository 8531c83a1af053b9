"""TaskAccuracyProbe scores a task's accuracy, counted independently, and works in a suite."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from retain.data.task import Task
from retain.errors import RetainError
from retain.evaluation.base import Probe
from retain.evaluation.suite import EvalSuite
from retain.evaluation.task_accuracy import task_accuracy
from retain.evaluation.task_probe import TaskAccuracyProbe


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(4, 3)

    def forward(self, pixel_values: Tensor) -> Tensor:
        out: Tensor = self.layer(pixel_values)
        return out


def _task(name: str, seed: int, n: int = 50) -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return Task(name, [{"pixel_values": x[i], "labels": y[i]} for i in range(n)])


def test_score_is_task_accuracy_counted_by_hand() -> None:
    model, task = Linear(), _task("t", 0)
    probe = TaskAccuracyProbe("t", task, batch_size=7)
    assert isinstance(probe, Probe)
    assert (probe.metric, probe.higher_is_better) == ("accuracy", True)
    model.train()
    result = probe.evaluate(model, None)
    assert model.training  # mode restored
    x = torch.stack([e["pixel_values"] for e in task.examples])
    y = torch.stack([e["labels"] for e in task.examples])
    with torch.no_grad():
        by_hand = (model(x).argmax(-1) == y).float().mean().item()
    assert result.score == pytest.approx(by_hand, abs=1e-12)
    assert result.score == task_accuracy(model, task)
    assert result.details == {"n": 50}


def test_works_in_a_suite_with_degradation() -> None:
    model = Linear()
    suite = EvalSuite(
        "s", [TaskAccuracyProbe("a", _task("a", 1)), TaskAccuracyProbe("b", _task("b", 2))]
    )
    before = suite.evaluate(model, None)
    with torch.no_grad():
        model.layer.weight.neg_()
        model.layer.bias.neg_()
    after = suite.evaluate(model, None)
    changes = {c.name: c for c in suite.compare(after, before)}
    for name in ("a", "b"):
        task = suite.probes[suite.names.index(name)]
        assert isinstance(task, TaskAccuracyProbe)
        assert changes[name].after.score == task_accuracy(model, task.task)
        expected = changes[name].before.score - changes[name].after.score
        assert changes[name].change.degradation == pytest.approx(expected)


def test_bad_batch_size_is_refused() -> None:
    with pytest.raises(RetainError, match="batch_size"):
        TaskAccuracyProbe("t", _task("t", 0), batch_size=0)
