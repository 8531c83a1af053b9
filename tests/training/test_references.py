"""The joint and single references (``fit_sequence(mode=...)``): what each trains, its matrix
and metrics, and what it refuses."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from retain.assets.mlp import MLP
from retain.data.permuted import TaskSplit, permuted_image_tasks
from retain.data.task import Classification
from retain.errors import RetainError
from retain.strategies.l2sp import L2SP
from retain.training.loop import TrainConfig
from retain.training.monitor import MonitorConfig
from retain.training.sequence import fit_sequence

# no shuffling: a task's data order does not depend on its seed, so a single reference's task t
# can be compared with a model trained on task t alone from the same start
CONFIG = TrainConfig(lr=3e-3, batch_size=32, epochs=1, shuffle=False)


@pytest.fixture(scope="module")
def splits() -> list[TaskSplit]:
    return permuted_image_tasks("digits", 3, seed=0)


def model() -> MLP:
    torch.manual_seed(0)
    return MLP(64, [32], 10)


def test_single_trains_each_task_from_the_start_alone(splits: list[TaskSplit]) -> None:
    trained, result = fit_sequence(model(), splits, None, CONFIG, mode="single")
    assert result.mode == "single"
    assert len(result.matrix) == 3
    assert all(len(row) == 3 for row in result.matrix)
    alone, own = fit_sequence(model(), [splits[2]], None, CONFIG)
    for name, weight in alone.state_dict().items():  # reset to the start, then task 2 only
        torch.testing.assert_close(trained.state_dict()[name], weight, rtol=0, atol=0)
    assert result.matrix[2][2] == own.matrix[0][0]
    diagonal = [result.matrix[t][t] for t in range(3)]
    assert result.metrics.average_accuracy == pytest.approx(sum(diagonal) / 3)
    assert min(diagonal) > 0.6  # each task learnt (chance 0.1)
    for key in ("backward_transfer", "forward_transfer", "average_forgetting"):
        assert math.isnan(getattr(result.metrics, key)), key


def test_joint_trains_once_on_every_task_mixed(splits: list[TaskSplit]) -> None:
    _, result = fit_sequence(model(), splits, None, CONFIG, mode="joint")
    _, sequential = fit_sequence(model(), splits, None, CONFIG)
    assert result.mode == "joint"
    assert [log.task for log in result.logs] == ["joint"]
    # one epoch over the mixture: as many steps as the sequence's three tasks together
    steps = sum(-(-len(s.train.examples) // CONFIG.batch_size) for s in splits)
    assert result.logs[0].steps == steps
    assert all(math.isnan(v) for row in result.matrix[:2] for v in row)
    last = result.matrix[2]
    assert result.metrics.average_accuracy == pytest.approx(sum(last) / 3)
    assert math.isnan(result.metrics.backward_transfer)
    # nothing is forgotten: the first task scores far above where the sequence left it
    assert last[0] > sequential.matrix[2][0] + 0.1
    assert min(last) > 0.5
    from retain.report.terminal import run_table

    lines = run_table(result).splitlines()
    assert [line.split()[0] for line in lines[2:4]] == ["(start)", "all"]  # one trained row
    assert lines[4].startswith("ACC")
    assert "BWT n/a" in lines[4]


def test_references_refuse_strategies_monitors_and_unmixable_tasks(
    splits: list[TaskSplit],
) -> None:
    with pytest.raises(RetainError, match="without strategies"):
        fit_sequence(model(), splits, L2SP(alpha=0.1), CONFIG, mode="joint")
    with pytest.raises(RetainError, match="without a monitor"):
        fit_sequence(model(), splits, None, CONFIG, mode="single", monitor=MonitorConfig())
    with pytest.raises(RetainError, match="is not one of"):
        fit_sequence(model(), splits, None, CONFIG, mode="cumulative")  # type: ignore[arg-type]
    other = replace(splits[1].train, objective=Classification(label_key="other"))
    mixed = [splits[0], replace(splits[1], train=other)]
    with pytest.raises(RetainError, match="another objective or batch format"):
        fit_sequence(model(), mixed, None, CONFIG, mode="joint")


class Routed(MLP):
    """An MLP with a per-task router, as a model with one head per task has."""

    def use_task(self, name: str) -> None:
        self.current = name


def test_joint_refuses_a_model_with_a_head_per_task(splits: list[TaskSplit]) -> None:
    torch.manual_seed(0)
    with pytest.raises(RetainError, match="a head per task"):
        fit_sequence(Routed(64, [32], 10), splits, None, CONFIG, mode="joint")
    _, result = fit_sequence(Routed(64, [32], 10), splits[:2], None, CONFIG, mode="single")
    assert result.mode == "single"
