"""Divergence: a huge learning rate or non-finite gradients stop the task with a one-line error
naming the step, the figure and the last good checkpoint; a normal run is bit-identical."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from retain.assets.mlp import MLP
from retain.data.permuted import TaskSplit, permuted_image_tasks
from retain.data.task import Task, batch_loss
from retain.errors import RetainError
from retain.strategies.base import Strategy
from retain.strategies.chain import Chain
from retain.training.checkpoint import load_checkpoint
from retain.training.checkpoint_scan import checkpoint_problem
from retain.training.divergence import DivergenceGuard
from retain.training.loop import TaskLog, TrainConfig, train_task
from retain.training.sequence import fit_sequence
from retain.training.sequence_state import RunState, TaskCheckpoints

CONFIG = TrainConfig(lr=3e-3, batch_size=32, shuffle=False)


@pytest.fixture(scope="module")
def splits() -> list[TaskSplit]:
    found = permuted_image_tasks("digits", 2, seed=0)
    return [TaskSplit(s.train.with_examples(s.train.examples[:320]), s.test) for s in found]


def model() -> nn.Module:
    torch.manual_seed(0)
    return MLP(64, [32], 10)


def figures(message: str) -> tuple[int, float, float]:
    """The step, the recent mean loss and the starting loss of a divergence message."""
    found = re.search(r"diverged at step (\d+): .* is (\S+), over 10 x .* loss (\S+);", message)
    assert found is not None, message
    return int(found[1]), float(found[2]), float(found[3])


def test_the_loss_rule_on_the_docstring_examples() -> None:
    guard = DivergenceGuard("t", 10.0, lambda step: f"; kept {step}")
    exploded = [2.30, 1e15, 1e15, 1e15, 1e15]
    guard.losses(exploded[:4])  # fewer than WINDOW steps: never
    with pytest.raises(RetainError) as caught:
        guard.losses(exploded)
    assert figures(str(caught.value)) == (5, 8e14, 2.3)
    assert str(caught.value).endswith(
        "; kept 0. Lower the learning rate or enable max_grad_norm "
        "(divergence_factor=None turns this off)"
    )
    guard.losses([0.004, 0.003, 0.002, 0.002, 0.002] + [0.05] * 5)  # 19x, but under 1 nat
    guard.losses([2.3] * 5 + [22.0] * 5)  # 9.6x the start
    with pytest.raises(RetainError, match="at step 10: the mean loss of steps 6-10 is 24"):
        guard.losses([2.3] * 5 + [24.0] * 5)
    DivergenceGuard("t", None, lambda _: "").losses(exploded)  # None: off


def test_a_huge_learning_rate_stops_with_the_step_and_the_figure(splits: list[TaskSplit]) -> None:
    task = splits[0].train
    with pytest.raises(RetainError) as caught:
        train_task(model(), task, None, TrainConfig(lr=1e6, batch_size=32))
    message = str(caught.value)
    assert message.startswith(f"task {task.name!r}: training diverged at step 5: ")
    assert "\n" not in message
    assert message.endswith("(divergence_factor=None turns this off)")
    step, recent, start = figures(message)
    # The start is the first step's loss (no update yet): about ln 10 for an untrained MLP.
    assert step == 5
    assert 2.0 < start < 2.6
    assert recent > 1e10 * start
    with pytest.raises(RetainError, match="training diverged at step 5"):  # SGD diverges too
        train_task(model(), task, None, TrainConfig(lr=1e3, batch_size=32, optimizer="sgd"))
    # Without the rule the same run ends "successfully" with absurd losses: what it guards.
    log = train_task(
        model(), task, None, TrainConfig(lr=1e6, batch_size=32, divergence_factor=None)
    )
    assert log.steps == 10
    assert max(log.losses) > 1e10


def test_a_normal_run_is_bit_identical_to_a_loop_without_checks(splits: list[TaskSplit]) -> None:
    task = splits[0].train
    for clip in (None, 1.0):
        # the hand loop's AdamW is torch's CPU default, the per-parameter for-loop
        config = replace(CONFIG, max_grad_norm=clip, optimizer_impl="for_loop")
        runs = []
        for factor in (10.0, None):
            trained = model()
            log = train_task(trained, task, None, replace(config, divergence_factor=factor))
            runs.append((log.losses, trained.state_dict()))
        by_hand, hand_losses = _by_hand(model(), task, clip)
        assert runs[0][0] == runs[1][0] == hand_losses
        for k, v in by_hand.state_dict().items():
            assert torch.equal(runs[0][1][k], v), k
            assert torch.equal(runs[1][1][k], v), k


def _by_hand(net: nn.Module, task: Task, clip: float | None) -> tuple[nn.Module, list[float]]:
    """The plain loop's steps written out, with no divergence checks."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    net.train()
    for start in range(0, len(task.examples), 32):
        batch = task.collate(task.examples[start : start + 32])
        loss = batch_loss(task.objective, net, batch)
        loss.backward()  # type: ignore[no-untyped-call]
        if clip is not None:
            nn.utils.clip_grad_norm_(net.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.item()))
    return net, losses


def test_non_finite_gradients_stop_before_the_update(splits: list[TaskSplit]) -> None:
    task = splits[0].train
    calls = [0]

    def poison(grad: Tensor) -> Tensor:  # an infinite gradient at step 3, with a finite loss
        calls[0] += 1
        return torch.full_like(grad, float("inf")) if calls[0] == 3 else grad

    for clip in (None, 1.0):
        calls[0], trained = 0, model()
        next(iter(trained.parameters())).register_hook(poison)  # type: ignore[no-untyped-call]
        with pytest.raises(RetainError) as caught:
            train_task(
                trained,
                task,
                None,
                TrainConfig(batch_size=32, max_grad_norm=clip, divergence_factor=None),
            )
        assert str(caught.value) == (
            f"task {task.name!r}: the gradient norm is inf at step 3; training stopped. "
            "Lower the learning rate or check the data"
        )
        two = model()
        train_task(two, task, None, TrainConfig(batch_size=32, max_grad_norm=clip, max_steps=2))
        for k, v in two.state_dict().items():  # step 3 never reached the weights
            assert torch.equal(trained.state_dict()[k], v), k


def test_bad_divergence_factors_are_refused() -> None:
    for bad in (1.0, 0.5, -3.0, float("inf"), float("nan"), True, "10"):
        with pytest.raises(RetainError, match=r"divergence_factor must be a number > 1 \(or None"):
            TrainConfig(divergence_factor=bad)  # type: ignore[arg-type]
    assert TrainConfig(divergence_factor=None).divergence_factor is None
    assert TrainConfig().divergence_factor == 10.0


class Blowup(Strategy):
    """From the second step of task ``task``, multiplies the learning rate by 1e9."""

    name = "blowup"

    def __init__(self, task: str) -> None:
        self.task, self.current = task, ""

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        self.current = task.name

    def lr_scheduler(self, optimizer: Optimizer, num_training_steps: int) -> LRScheduler | None:
        factor = 1e9 if self.current == self.task else 1.0
        return LambdaLR(optimizer, lambda step: 1.0 if step == 0 else factor)


def test_divergence_in_task_two_names_the_end_of_task_one(
    splits: list[TaskSplit], tmp_path: Path
) -> None:
    folder = tmp_path / "checkpoints"
    with pytest.raises(RetainError) as caught:
        fit_sequence(
            model(),
            splits,
            Blowup(splits[1].train.name),
            CONFIG,
            checkpoint_dir=folder,
            checkpoint_every=2,
        )
    message = str(caught.value)
    step, recent, start = figures(message)
    assert message.startswith(f"task {splits[1].train.name!r}: training diverged at step 5")
    # Step checkpoints 2 and 4 of task two were saved inside the diverging window: the one named
    # is where task two began, the end of task one (10 steps of 32 examples).
    start_of_two = folder / "tasks" / "step-10"
    assert f"; the last good checkpoint is {str(start_of_two)!r}." in message
    assert checkpoint_problem(start_of_two) == ""
    position, _ = load_checkpoint(start_of_two, model=None, rng=False)
    assert position["task"] == 1
    assert position["global_step"] == 10
    assert (folder / "steps" / "step-14").is_dir()  # saved, but not offered
    assert recent > 10 * start
    assert step == 5


def test_the_last_good_checkpoint_is_the_newest_saved_by_the_step(tmp_path: Path) -> None:
    net = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    start, steps = tmp_path / "tasks" / "step-7", tmp_path / "steps"
    hooks = TaskCheckpoints(tmp_path, 3, net, Chain([]), RunState(["a"]), 0, start=start).hooks(
        None
    )
    assert hooks.after_step is not None

    def named(path: Path) -> str:
        return f"; the last good checkpoint is {str(path)!r}"

    log = TaskLog(task="a")
    for _ in range(7):  # checkpoints after steps 3 and 6 (keep=1 deletes step-3)
        log.losses.append(1.0)
        hooks.after_step(log, optimizer, None)
        if log.steps == 4:
            assert hooks.last_saved(3) == named(steps / "step-3")
            assert hooks.last_saved(2) == named(start)
    assert sorted(p.name for p in steps.iterdir()) == ["step-6"]
    assert hooks.last_saved(6) == hooks.last_saved(100) == named(steps / "step-6")
    assert hooks.last_saved(5) == named(start)  # step-3 is gone: the task's start is left
    none = TaskCheckpoints(None, 0, net, Chain([]), RunState(["a"]), 0).hooks(None)
    assert none.last_saved(10) == ""
