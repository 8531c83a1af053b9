"""The plain loop and a Hugging Face Trainer with RetainCallback take identical steps."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import Trainer

from retain.data.task import Task
from retain.errors import RetainError
from retain.strategies.base import Strategy
from retain.strategies.chain import Chain, chain
from retain.training.hf import RetainCallback
from retain.training.loop import TrainConfig, make_optimizer, train_task
from training_helpers import random_task, tiny_classifier, train_with_trainer, trainer_args


class Counter(Strategy):
    """Counts hook calls and scales gradients by 0.5 (a visible gradient transform)."""

    name = "counter"

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def _hit(self, hook: str) -> None:
        self.calls[hook] = self.calls.get(hook, 0) + 1

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        self._hit("on_task_start")

    def after_backward(self, model: nn.Module) -> None:
        self._hit("after_backward")
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(0.5)

    def on_step(self, step: int, model: nn.Module) -> None:
        self._hit("on_step")

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        self._hit("on_epoch_end")

    def on_task_end(self, model: nn.Module, task: Task) -> None:
        self._hit("on_task_end")


def test_plain_loop_and_trainer_reach_identical_weights(tmp_path: Path) -> None:
    config = TrainConfig(lr=1e-2, batch_size=8, epochs=2, shuffle=False)
    plain, hf = tiny_classifier(), tiny_classifier()
    plain_counter, hf_counter = Counter(), Counter()
    for i, name in enumerate(["a", "b"]):
        task = random_task(name, seed=i)
        train_task(plain, task, plain_counter, config)
        train_with_trainer(hf, task, Chain([hf_counter]), config, tmp_path / name)
    for (name, p), q in zip(plain.named_parameters(), hf.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), name
    expected = {
        "on_task_start": 2,
        "after_backward": 12,
        "on_step": 12,
        "on_epoch_end": 4,
        "on_task_end": 2,
    }
    assert plain_counter.calls == expected
    assert hf_counter.calls == expected


def test_training_changes_weights_and_logs_losses() -> None:
    model = tiny_classifier()
    before = copy.deepcopy(model)
    log = train_task(model, random_task("a"), None, TrainConfig(lr=1e-2, batch_size=8))
    assert log.steps == 3
    assert all(loss > 0 for loss in log.losses)
    assert not torch.equal(model.classifier.weight, before.classifier.weight)


def test_max_steps_stops_early_and_seed_fixes_the_order() -> None:
    config = TrainConfig(lr=1e-2, batch_size=4, epochs=3, max_steps=5, seed=3)
    a, b = tiny_classifier(), tiny_classifier()
    assert train_task(a, random_task("t"), None, config).steps == 5
    train_task(b, random_task("t"), None, config)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_non_finite_loss_names_the_step() -> None:
    model = tiny_classifier()
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(RetainError, match="loss is nan at step 1"):
        train_task(model, random_task("a"), None, TrainConfig(batch_size=8))


def test_bad_config_is_refused() -> None:
    with pytest.raises(RetainError, match="learning rate"):
        TrainConfig(lr=0)
    with pytest.raises(RetainError, match="unknown optimizer"):
        TrainConfig(optimizer="adam")  # type: ignore[arg-type]


def test_sgd_with_momentum_is_built_from_groups() -> None:
    optimizer = make_optimizer(tiny_classifier(), None, TrainConfig(optimizer="sgd", momentum=0.9))
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["momentum"] == 0.9


def _trainer(model: nn.Module, task: Task, strategies: Chain, tmp_path: Path, **kw: Any) -> Any:
    config = TrainConfig(lr=1e-2, batch_size=8, shuffle=False)
    return Trainer(
        model=model,
        args=trainer_args(tmp_path, config),
        train_dataset=task.examples,  # type: ignore[arg-type]
        callbacks=[RetainCallback(strategies, task)],
        **kw,
    )


def test_trainer_set_ups_that_would_silently_ignore_a_strategy_are_refused(
    tmp_path: Path,
) -> None:
    task = random_task("a")
    model = tiny_classifier()
    layerwise = chain({"name": "layerwise_lr", "decay": 0.5})
    with pytest.raises(RetainError, match="begin_task"):
        _trainer(model, task, layerwise, tmp_path).train()
    layerwise.begin_task(model, task)
    with pytest.raises(RetainError, match="needs the optimizer built from the strategies"):
        _trainer(model, task, layerwise, tmp_path).train()

    warm = chain({"name": "warmup", "warmup_steps": 1})
    warm.begin_task(model, task)
    optimizer = make_optimizer(model, warm, TrainConfig(lr=1e-2))
    with pytest.raises(RetainError, match="uses its own"):
        _trainer(model, task, warm, tmp_path, optimizers=(optimizer, None)).train()
    scheduler = warm.lr_scheduler(optimizer, 3)
    _trainer(model, task, warm, tmp_path, optimizers=(optimizer, scheduler)).train()
