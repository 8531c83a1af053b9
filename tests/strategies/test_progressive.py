"""progressive: one adapter per task, routed by task; backward transfer is exactly zero."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from retain.data.task import Task
from retain.errors import RetainError
from retain.strategies.progressive import Progressive, adapter_name
from retain.training.loop import TrainConfig, train_task
from tiny_models import tiny_bert_config

CONFIG = TrainConfig(lr=2e-2, batch_size=8, epochs=2)


def tiny_classifier(seed: int = 0) -> Any:
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    config = tiny_bert_config(
        vocab_size=100, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3
    )
    return BertForSequenceClassification(config)


def random_task(name: str, seed: int, n: int = 32) -> tuple[Task, torch.Tensor]:
    """A task of random ids and labels, and held-out test ids drawn the same way."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (n, 8), generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    test_ids = torch.randint(0, 100, (16, 8), generator=g)
    return Task(name, [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]), test_ids


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=ids).logits
    return out


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_backward_transfer_is_exactly_zero() -> None:
    task_a, test_a = random_task("A", seed=1)
    task_b, _ = random_task("B", seed=2)
    base = tiny_classifier()
    untrained = logits(base, test_a)
    strategy = Progressive(config={"r": 4})
    model = strategy.prepare(base)
    assert not any(p.requires_grad for p in model.parameters())

    train_task(model, task_a, strategy, CONFIG)
    strategy.use_task(model, "A")
    after_a = logits(model, test_a)
    assert (after_a - untrained).abs().max() > 1e-2  # task A did train its adapter and head
    frozen = snapshot(model)  # the base and everything of adapter A

    log_b = train_task(model, task_b, strategy, CONFIG)
    new = {n for n, _ in model.named_parameters()} - set(frozen)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == new  # training B moved B's adapter and head copy, nothing else
    assert any(".lora_A.B." in n for n in new)
    assert any(".modules_to_save.B." in n for n in new)
    assert log_b.losses[-1] < log_b.losses[0]

    strategy.use_task(model, "A")
    assert torch.equal(logits(model, test_a), after_a)  # BWT exactly 0
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p.detach(), frozen[name]), name
    strategy.use_task(model, "B")
    assert (logits(model, test_a) - after_a).abs().max() > 1e-2  # routing reaches adapter B
    assert strategy.tasks == ["A", "B"]
    assert strategy.state_dict() == {"tasks": ["A", "B"]}


def test_task_names_must_be_distinct_and_known() -> None:
    strategy = Progressive(config={"r": 2})
    model = strategy.prepare(tiny_classifier())
    task, _ = random_task("task-1", seed=1, n=8)
    train_task(model, task, strategy, CONFIG)
    task_b = Task("B", task.examples)
    strategy.on_task_start(model, task_b)
    strategy.on_task_start(model, task_b)  # starting the newest task again continues it
    assert strategy.tasks == ["task-1", "B"]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(".B." in n for n in trainable)
    with pytest.raises(RetainError, match="already has an adapter for task 'task-1'"):
        strategy.on_task_start(model, task)
    with pytest.raises(RetainError, match=r"already has an adapter for task 'task-1'.*'task 1'"):
        strategy.on_task_start(model, Task("task 1", task.examples))  # same adapter name
    with pytest.raises(RetainError, match=r"no adapter for task 'C' \(tasks: 'task-1', 'B'\)"):
        strategy.use_task(model, "C")
    assert adapter_name("task 1") == adapter_name("task-1") == "task_1"


def test_training_through_another_tasks_adapter_is_refused() -> None:
    strategy = Progressive(config={"r": 2})
    model = strategy.prepare(tiny_classifier())
    train_task(model, random_task("A", seed=1, n=8)[0], strategy, CONFIG)
    strategy.on_task_start(model, random_task("B", seed=2, n=8)[0])
    strategy.use_task(model, "A")  # an evaluation in the middle of task B
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(RetainError, match="call use_task\\(model, 'B'\\)"):
        strategy.after_backward(model)
    strategy.use_task(model, "B")
    assert any(p.requires_grad for p in model.parameters())
    strategy.after_backward(model)


def test_resume_from_state_recreates_the_adapters() -> None:
    task_a, test_a = random_task("A", seed=1, n=16)
    task_b, _ = random_task("B", seed=2, n=16)
    strategy = Progressive(config={"r": 2})
    model = strategy.prepare(tiny_classifier())
    train_task(model, task_a, strategy, CONFIG)
    train_task(model, task_b, strategy, CONFIG)
    state = strategy.state_dict()
    weights = model.state_dict()
    strategy.use_task(model, "A")
    expected = logits(model, test_a)

    # A fresh process: a new strategy with the saved state, a fresh model, the checkpoint.
    fresh = Progressive(config={"r": 2})
    fresh.load_state_dict(state)
    resumed = fresh.prepare(tiny_classifier(seed=5))
    resumed.load_state_dict(weights, strict=True)
    fresh.use_task(resumed, "A")
    assert torch.equal(logits(resumed, test_a), expected)

    # The adapter of a new task starts from the same weights in both runs (seeded by its name).
    task_c, _ = random_task("C", seed=3, n=8)
    copied = copy.deepcopy(model)
    strategy.on_task_start(model, task_c)
    fresh.on_task_start(resumed, task_b)  # the last saved task may start again
    fresh.on_task_start(resumed, task_c)
    mine, theirs = dict(model.named_parameters()), dict(resumed.named_parameters())
    assert mine.keys() == theirs.keys()
    for name, p in mine.items():
        assert torch.equal(p, theirs[name]), name

    # A copy of the model is adopted by a strategy that loaded the state but never prepared.
    adopter = Progressive(config={"r": 2})
    adopter.load_state_dict(state)
    adopter.use_task(copied, "A")
    assert torch.equal(logits(copied, test_a), expected)
    with pytest.raises(RetainError, match="load its state into a fresh strategy"):
        adopter.load_state_dict(state)
