"""Gradient interference: cosines of hand-made gradients, the reference gradient equals the mean
loss's gradient, and the tracker's cosines during training equal an independent recomputation."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from retain.diagnostics.interference import (
    InterferenceTracker,
    gradient_cosines,
    gradient_interference,
    task_gradient,
)
from retain.strategies.base import Strategy
from retain.training.loop import TrainConfig, train_task
from training_helpers import random_task, tiny_classifier


def test_identical_gradients_have_cosine_one_and_opposite_minus_one() -> None:
    g = {"layers.0.w": torch.tensor([1.0, 2.0]), "layers.1.w": torch.tensor([3.0, -1.0])}
    overall, layers = gradient_cosines(g, g)
    assert overall == pytest.approx(1.0)
    assert layers == {"layers.0": pytest.approx(1.0), "layers.1": pytest.approx(1.0)}
    minus = {k: -v for k, v in g.items()}
    assert gradient_cosines(g, minus)[0] == pytest.approx(-1.0)


def test_hand_computed_layer_and_overall_cosines() -> None:
    a = {"layers.0.w": torch.tensor([1.0, 0.0]), "layers.1.w": torch.tensor([1.0])}
    b = {"layers.0.w": torch.tensor([0.0, 2.0]), "layers.1.w": torch.tensor([-3.0])}
    overall, layers = gradient_cosines(a, b)
    assert layers["layers.0"] == pytest.approx(0.0)
    assert layers["layers.1"] == pytest.approx(-1.0)
    assert overall == pytest.approx(-3.0 / (2**0.5 * 13**0.5))
    assert gradient_cosines(a, {k: torch.zeros_like(v) for k, v in b.items()})[0] is None


def flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_task_gradient_is_the_gradient_of_the_mean_loss_and_leaves_grad_alone() -> None:
    model = tiny_classifier()
    task = random_task("t", n=12)
    got = task_gradient(model, task, batch_size=5)  # batches of 5, 5, 2: weighted by size
    assert all(p.grad is None for p in model.parameters())
    reference = copy.deepcopy(model)
    batch = task.collate(list(task.examples))
    reference(**batch).loss.backward()
    for name, p in reference.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6)


def test_gradient_interference_of_a_task_with_itself() -> None:
    model = tiny_classifier()
    task = random_task("t", n=16)
    report = gradient_interference(model, task, task, batches=4, batch_size=4)
    assert report.cosine == pytest.approx(1.0)
    assert report.pair_cosines == [pytest.approx(1.0)] * 4
    assert report.conflicting == 0.0
    other = random_task("u", n=16, seed=7)
    mixed = gradient_interference(model, task, other, batches=2, batch_size=8)
    expected = gradient_cosines(
        task_gradient(model, task.with_examples(task.examples[:16]), batch_size=8),
        task_gradient(model, other.with_examples(other.examples[:16]), batch_size=8),
    )[0]
    assert mixed.cosine == pytest.approx(expected, rel=1e-4)
    assert mixed.conflicting == sum(c < 0 for c in mixed.pair_cosines) / 2


class Snapshot(Strategy):
    """Saves the gradient and the weights whenever the tracker measures (placed after it)."""

    name = "snapshot"

    def __init__(self, tracker: InterferenceTracker) -> None:
        self.tracker = tracker
        self.saved: list[tuple[torch.Tensor, dict[str, Any]]] = []
        self.seen = 0

    def after_backward(self, model: nn.Module) -> None:
        if len(self.tracker.records) > self.seen:
            self.seen = len(self.tracker.records)
            state = {k: v.clone() for k, v in model.state_dict().items()}
            self.saved.append((flat_grad(model).clone(), state))


def test_tracker_cosines_equal_an_independent_recomputation() -> None:
    model = tiny_classifier()
    first, second = random_task("first", n=16), random_task("second", n=16, seed=3)
    tracker = InterferenceTracker(every=2, samples=6, tasks=[first, second])
    snapshot = Snapshot(tracker)
    config = TrainConfig(lr=1e-2, batch_size=4, max_steps=6, epochs=2)
    train_task(model, first, [tracker, snapshot], config, progress=False)
    assert tracker.records == []  # the first task has no prior to compare with
    train_task(model, second, [tracker, snapshot], config, progress=False)
    assert [(r["task"], r["step"], r["global_step"]) for r in tracker.records] == [
        ("second", 2, 8),
        ("second", 4, 10),
        ("second", 6, 12),
    ]
    for record, (grad, state) in zip(tracker.records, snapshot.saved, strict=True):
        again = copy.deepcopy(model)
        again.load_state_dict(state)
        again.eval()
        again(**first.collate(list(first.examples[:6]))).loss.backward()
        reference = flat_grad(again)
        expected = float(grad @ reference / (grad.norm() * reference.norm()))
        assert record["cosine"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
        assert set(record["layers"]) >= {"bert.encoder.layer.0", "bert.encoder.layer.1"}
    summary = tracker.summary()
    values = [r["cosine"] for r in tracker.records]
    assert summary["measured"] == 3
    assert summary["conflicting"] == sum(v < 0 for v in values) / 3
    assert tracker.describe() == "interference(every=2, samples=6, prior='earlier tasks')"
    restored = InterferenceTracker(every=2, samples=6, tasks=[first, second])
    restored.load_state_dict(tracker.state_dict())
    assert restored.records == tracker.records
    assert restored.global_step == 12
