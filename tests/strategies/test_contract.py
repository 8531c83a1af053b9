"""The shared contract: every registered strategy is one row, and every row passes every check.

* the plain loop and ``transformers.Trainer`` with :class:`RetainCallback` reach the same weights;
* strength 0 (alpha = lambda = 0, ratio 0, memory 0, decay 1, no warmup) equals plain training;
* ``state_dict`` saved as safetensors and loaded into a fresh strategy continues identically;
* a penalty's gradient-space update equals the autograd gradient of its loss-space form.

Two tasks are trained in sequence so that strategies with memory (Fisher, buffers, anchors,
adapters) act on the second.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from retain.data.task import CausalLM, Task, pad_collate
from retain.strategies.base import STRATEGIES, build_strategy
from retain.strategies.chain import Chain
from retain.strategies.state import load_strategy_state, save_strategy_state
from retain.training.loop import TrainConfig, train_task
from tiny_models import tiny_llama_config
from training_helpers import tiny_classifier, train_with_trainer


@dataclass(frozen=True)
class Row:
    """One strategy in the contract: parameters that act, and parameters that do nothing."""

    name: str
    active: dict[str, Any]
    neutral: dict[str, Any] | None = None  # None: the strategy has no strength to set to 0
    model: Literal["bert", "llama"] = "bert"
    penalty: bool = False  # has a loss-space penalty(model)


ROWS = [
    Row("l2sp", {"alpha": 0.5}, {"alpha": 0.0}, penalty=True),
    Row("ewc", {"strength": 50.0, "fisher_samples": 16}, {"strength": 0.0}, penalty=True),
    Row("mas", {"strength": 50.0, "samples": 16}, {"strength": 0.0}, penalty=True),
    Row("replay", {"ratio": 0.5, "buffer_size": 16}, {"ratio": 0.0}),
    Row(
        "generative_replay",
        {"ratio": 0.5, "num_samples": 4, "max_new_tokens": 6},
        {"ratio": 0.0, "num_samples": 4, "max_new_tokens": 6},
        model="llama",
    ),
    Row("agem", {"memory_size": 16, "sample_size": 8}, {"memory_size": 0}),
    Row("lora", {"r": 4, "target_modules": ["query", "value"]}),
    Row(
        "peft",
        {
            "method": "ia3",
            "config": {
                "target_modules": ["key", "value", "output.dense"],
                "feedforward_modules": ["output.dense"],
            },
        },
    ),
    Row("progressive", {"config": {"r": 4, "target_modules": ["query", "value"]}}),
    Row("layerwise_lr", {"decay": 0.5}, {"decay": 1.0}),
    Row("gradual_unfreezing", {"every": 2}),
    Row("warmup", {"warmup_steps": 1}, {"warmup_steps": 0, "schedule": "constant"}),
    Row("freeze", {"params": r"embeddings\."}),
]
BY_NAME = {row.name: row for row in ROWS}
CONFIG = TrainConfig(lr=5e-3, batch_size=8, epochs=1, shuffle=False)


def test_every_registered_strategy_has_a_row() -> None:
    assert sorted(BY_NAME) == STRATEGIES.names()


def make_model(row: Row) -> nn.Module:
    if row.model == "llama":
        torch.manual_seed(0)
        return LlamaForCausalLM(tiny_llama_config(60, bos_token_id=1, eos_token_id=2))
    return tiny_classifier()


def make_tasks(row: Row) -> list[Task]:
    tasks = []
    for t in range(2):
        g = torch.Generator().manual_seed(10 + t)
        if row.model == "llama":
            ids = torch.randint(3, 60, (16, 8), generator=g)
            examples = [{"input_ids": ids[i], "labels": ids[i].clone()} for i in range(16)]
            tasks.append(Task(f"lm{t}", examples, CausalLM(), pad_collate(0)))
        else:
            ids = torch.randint(5, 100, (16, 10), generator=g)
            labels = torch.randint(0, 3, (16,), generator=g)
            mask = torch.ones(10, dtype=torch.long)
            examples = [
                {"input_ids": ids[i], "attention_mask": mask, "labels": labels[i]}
                for i in range(16)
            ]
            tasks.append(Task(f"task{t}", examples))
    return tasks


def strategy(row: Row, params: dict[str, Any]) -> Chain:
    return Chain([build_strategy(row.name, **params)])


def run_plain(row: Row, params: dict[str, Any] | None) -> nn.Module:
    model = make_model(row)
    strategies = strategy(row, params) if params is not None else Chain([])
    model = strategies.prepare(model)
    for task in make_tasks(row):
        train_task(model, task, strategies, CONFIG)
    return model


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_same(a: nn.Module, b: nn.Module, atol: float = 0.0) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        if atol == 0.0:
            assert torch.equal(wa[name], wb[name]), name
        else:
            assert torch.allclose(wa[name], wb[name], atol=atol, rtol=0), name


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_plain_loop_and_trainer_callback_agree(row: Row, tmp_path: Path) -> None:
    plain = run_plain(row, row.active)
    strategies = strategy(row, row.active)
    model = strategies.prepare(make_model(row))
    for task in make_tasks(row):
        train_with_trainer(model, task, strategies, CONFIG, tmp_path / task.name)
    assert_same(plain, model, atol=1e-6)


@pytest.mark.parametrize("row", [r for r in ROWS if r.neutral is not None], ids=lambda r: r.name)
def test_strength_zero_equals_plain_fine_tuning(row: Row) -> None:
    assert_same(run_plain(row, row.neutral), run_plain(row, None))


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_the_strategy_acts(row: Row) -> None:
    """Guards the other checks: with active parameters the result differs from plain training,
    and exactly the penalty strategies have a loss-space penalty after training."""
    strategies = strategy(row, row.active)
    model = strategies.prepare(make_model(row))
    for task in make_tasks(row):
        train_task(model, task, strategies, CONFIG)
    assert (strategies.penalty(model) is not None) == row.penalty
    a, b = weights(model), weights(run_plain(row, None))
    shared = [n for n in a if n in b]
    assert a.keys() != b.keys() or any(not torch.equal(a[n], b[n]) for n in shared)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_state_round_trip_resumes_identically(row: Row, tmp_path: Path) -> None:
    first, second = make_tasks(row)
    strategies = strategy(row, row.active)
    model = strategies.prepare(make_model(row))
    train_task(model, first, strategies, CONFIG)
    path = save_strategy_state(strategies, tmp_path / "state.safetensors")

    resumed_model = copy.deepcopy(model)
    resumed = strategy(row, row.active)
    load_strategy_state(resumed, path)
    train_task(model, second, strategies, CONFIG)
    train_task(resumed_model, second, resumed, CONFIG)
    assert_same(model, resumed_model)


@pytest.mark.parametrize("row", [r for r in ROWS if r.penalty], ids=lambda r: r.name)
def test_gradient_transform_equals_the_loss_space_penalty(row: Row) -> None:
    first, _ = make_tasks(row)
    strategies = strategy(row, row.active)
    model = strategies.prepare(make_model(row))
    train_task(model, first, strategies, CONFIG)
    strategies.on_task_start(model, first)
    with torch.no_grad():  # move away from the anchor so the penalty is not zero
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    penalty = strategies.penalty(model)
    assert penalty is not None
    trainable = [p for p in model.parameters() if p.requires_grad]
    expected = torch.autograd.grad(penalty, trainable, allow_unused=True)
    for p in trainable:
        p.grad = torch.zeros_like(p)
    strategies.after_backward(model)
    for p, e in zip(trainable, expected, strict=True):
        want = torch.zeros_like(p) if e is None else e
        assert p.grad is not None
        assert torch.allclose(p.grad, want, atol=1e-6, rtol=1e-6)
    assert any(e is not None and e.abs().sum() > 0 for e in expected)
