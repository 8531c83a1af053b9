"""Warm-up schedules: the rate at every step against the written-out formulas."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from retain.data.task import Classification, Task
from retain.errors import RetainError
from retain.strategies.base import build_strategy
from retain.strategies.layerwise_lr import LayerwiseLR
from retain.strategies.warmup import Warmup, slanted_triangular_factor
from retain.training.loop import TrainConfig, make_optimizer, train_task
from tiny_models import tiny_bert_config

BASE = 0.1


def _rates(strategy: Warmup, total: int, groups: int = 1) -> list[list[float]]:
    """The rate of each group in force at optimizer steps 1..total (+ the one after)."""
    params = [nn.Parameter(torch.zeros(1)) for _ in range(groups)]
    optimizer = torch.optim.SGD([{"params": [p], "lr": BASE * 2**-i} for i, p in enumerate(params)])
    scheduler = strategy.lr_scheduler(optimizer, total)
    seen = []
    for _ in range(total + 1):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


def _check(strategy: Warmup, total: int, factor: Callable[[int], float]) -> None:
    got = [r[0] for r in _rates(strategy, total)]
    assert got == pytest.approx([BASE * factor(t) for t in range(total + 1)], rel=1e-12, abs=1e-15)


def test_linear_warmup_peaks_at_base_rate_then_decays_to_zero() -> None:
    w, total = 4, 10
    _check(Warmup(warmup_steps=w), total, lambda t: t / w if t < w else (total - t) / (total - w))
    rates = [r[0] for r in _rates(Warmup(warmup_steps=w), total)]
    assert rates[w] == pytest.approx(BASE)
    assert max(rates) == rates[w]
    assert rates[0] == rates[total] == 0.0


def test_constant_after_warmup() -> None:
    _check(Warmup(warmup_steps=3, schedule="constant"), 8, lambda t: min(t / 3, 1.0))


def test_cosine_after_warmup() -> None:
    w, total = 2, 12

    def cosine(t: int) -> float:
        if t < w:
            return t / w
        return 0.5 * (1 + math.cos(math.pi * (t - w) / (total - w)))

    _check(Warmup(warmup_steps=w, schedule="cosine"), total, cosine)


def test_slanted_triangular_hand_values() -> None:
    """T=20, cut_frac=0.1, ratio=32: cut=2, and lr/lr_max = (1 + 31 p) / 32."""
    strategy = Warmup(schedule="slanted_triangular", cut_frac=0.1, ratio=32)
    rates = [r[0] / BASE for r in _rates(strategy, 20)]
    assert rates[0] == pytest.approx(1 / 32)  # t=0: p=0
    assert rates[1] == pytest.approx(16.5 / 32)  # p=1/2
    assert rates[2] == pytest.approx(1.0)  # t=cut: p=1, the peak
    assert rates[11] == pytest.approx(16.5 / 32)  # p = 1 - 9/18
    assert rates[20] == pytest.approx(1 / 32)  # t=T: p = 1 - 18/18 = 0
    assert max(rates) == rates[2]


def test_slanted_triangular_formula_at_every_step() -> None:
    total, cut_frac, ratio = 37, 0.2, 10.0
    cut = math.floor(total * cut_frac)  # 7

    def paper(t: int) -> float:  # Howard & Ruder 2018, eq. 3 (p clamped at 0 past the end)
        p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
        return (1 + max(p, 0.0) * (ratio - 1)) / ratio

    strategy = Warmup(schedule="slanted_triangular", cut_frac=cut_frac, ratio=ratio)
    _check(strategy, total, paper)
    assert slanted_triangular_factor(total, total, cut_frac, ratio) >= 1 / ratio


def test_default_is_a_tenth_of_the_steps() -> None:
    strategy = build_strategy("warmup")
    assert isinstance(strategy, Warmup)
    assert (strategy.warmup_steps, strategy.warmup_ratio) == (None, 0.1)
    assert strategy.num_warmup_steps(40) == 4


def test_warmup_ratio_rounds_to_whole_steps() -> None:
    strategy = Warmup(warmup_ratio=0.3)
    assert strategy.num_warmup_steps(10) == 3
    _check(strategy, 10, lambda t: t / 3 if t < 3 else (10 - t) / 7)


def test_every_layerwise_group_is_scaled_by_the_same_factor() -> None:
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(100))
    optimizer = make_optimizer(model, LayerwiseLR(decay=0.5), TrainConfig(lr=0.08))
    initial = [g["lr"] for g in optimizer.param_groups]
    assert initial == [0.02, 0.04, 0.08, 0.08]
    scheduler = Warmup(warmup_steps=3, schedule="cosine").lr_scheduler(optimizer, 9)
    for t in range(10):
        factor = t / 3 if t < 3 else 0.5 * (1 + math.cos(math.pi * (t - 3) / 6))
        got = [g["lr"] for g in optimizer.param_groups]
        assert got == pytest.approx([lr * factor for lr in initial], rel=1e-12, abs=1e-15)
        optimizer.step()
        scheduler.step()


def test_zero_warmup_constant_is_plain_training() -> None:
    from transformers import BertForSequenceClassification

    g = torch.Generator().manual_seed(1)
    examples = [
        {"input_ids": torch.randint(0, 100, (8,), generator=g), "labels": torch.tensor(i % 2)}
        for i in range(12)
    ]
    task = Task("toy", examples, Classification())
    config = TrainConfig(lr=1e-2, batch_size=4, epochs=2)
    models = []
    for strategy in (None, build_strategy("warmup", warmup_steps=0, schedule="constant")):
        torch.manual_seed(0)
        model = BertForSequenceClassification(tiny_bert_config(100))
        train_task(model, task, strategy, config)
        models.append(model)
    torch.manual_seed(0)
    start = BertForSequenceClassification(tiny_bert_config(100))
    moved = False
    for (name, a), b, c in zip(
        models[0].named_parameters(), models[1].parameters(), start.parameters(), strict=True
    ):
        assert torch.equal(a, b), name
        moved = moved or not torch.equal(a, c)
    assert moved


def test_linear_warmup_reaches_the_optimizer_in_train_task() -> None:
    """Inside train_task, step 1 of a linear warm-up runs at rate 0; without it, weights move."""
    task = Task("toy", [{"input": torch.ones(3), "labels": torch.tensor(1)}] * 4, Classification())
    config = TrainConfig(lr=0.1, batch_size=4)  # one optimizer step
    for strategy, moves in ((None, True), (Warmup(warmup_steps=1), False)):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        before = [p.detach().clone() for p in model.parameters()]
        train_task(model, task, strategy, config)
        same = all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        assert same is not moves


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"warmup_steps": 2, "warmup_ratio": 0.1},
            "one of warmup_steps and warmup_ratio, got both",
        ),
        ({"warmup_steps": -1}, "warmup_steps must be a whole number >= 0"),
        ({"warmup_steps": 2.5}, "warmup_steps must be a whole number >= 0"),
        ({"warmup_ratio": -0.1}, r"warmup_ratio must be in \[0, 1\]"),
        ({"warmup_ratio": 1.5}, r"warmup_ratio must be in \[0, 1\]"),
        ({"warmup_steps": 1, "schedule": "step"}, "schedule 'step' is unknown"),
        ({"schedule": "slanted_triangular", "warmup_steps": 3}, "drop warmup_steps"),
        ({"schedule": "slanted_triangular", "cut_frac": 0.0}, r"cut_frac must be in \(0, 1\)"),
        ({"schedule": "slanted_triangular", "ratio": 0.5}, "ratio must be a finite number >= 1"),
    ],
)
def test_bad_parameters(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RetainError, match=message):
        Warmup(**kwargs)  # type: ignore[arg-type]


def test_schedule_longer_than_the_task_is_refused() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(RetainError, match="longer than the task's 5 optimizer steps"):
        Warmup(warmup_steps=6).lr_scheduler(optimizer, 5)
    with pytest.raises(RetainError, match="cut_frac >= 1"):
        Warmup(schedule="slanted_triangular").lr_scheduler(optimizer, 9)  # floor(0.9) = 0
