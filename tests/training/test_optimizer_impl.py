"""Fused, foreach and for-loop optimizers train a real model to the same weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retain.assets.mlp import MLP
from retain.data.permuted import permuted_image_tasks
from retain.errors import RetainError
from retain.experiment.config import TrainingSection
from retain.training.loop import TrainConfig, make_optimizer, train_task
from retain.training.optimizer_impl import OptimizerImpl, check_impl, choose_impl, impl_of


def trained(impl: OptimizerImpl, optimizer: str) -> nn.Module:
    task = permuted_image_tasks("digits", 1, seed=0)[0].train
    torch.manual_seed(0)
    model = MLP(64, [32], 10)
    config = TrainConfig(
        lr=1e-2,
        batch_size=32,
        max_steps=25,
        optimizer=optimizer,  # type: ignore[arg-type]
        weight_decay=0.01,
        momentum=0.9,
        optimizer_impl=impl,
    )
    train_task(model, task, None, config, progress=False)
    return model


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("impl", ["fused", "foreach", "auto"])
def test_every_implementation_matches_the_for_loop(optimizer: str, impl: OptimizerImpl) -> None:
    reference, other = trained("for_loop", optimizer), trained(impl, optimizer)
    moved = max(
        (a - b).abs().max().item()
        for a, b in zip(reference.parameters(), other.parameters(), strict=True)
    )
    assert moved < 1e-5


def test_auto_is_fused_on_cpu_float_parameters() -> None:
    model = MLP(4, [3], 2)
    for impl, flags in [("auto", "fused"), ("foreach", "foreach"), ("for_loop", "for_loop")]:
        optimizer = make_optimizer(model, None, TrainConfig(optimizer_impl=impl))  # type: ignore[arg-type]
        assert impl_of(optimizer) == flags


def test_fused_needs_floating_point_parameters() -> None:
    counts = nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False)
    assert choose_impl("auto", [{"params": [counts]}]) == "foreach"
    with pytest.raises(RetainError, match="optimizer_impl='fused' needs floating-point"):
        choose_impl("fused", [{"params": [counts]}])


def test_unknown_implementation_is_refused_in_config_and_yaml() -> None:
    with pytest.raises(RetainError, match="unknown optimizer_impl 'fast'"):
        TrainConfig(optimizer_impl="fast")  # type: ignore[arg-type]
    with pytest.raises(RetainError, match="unknown optimizer_impl"):
        check_impl("fast")
    assert TrainingSection().optimizer_impl == TrainConfig().optimizer_impl == "auto"
