"""Layer-wise learning-rate decay: group rates, coverage, equivalence to plain training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from retain.data.task import Classification, Task
from retain.errors import RetainError
from retain.strategies.base import build_strategy
from retain.strategies.chain import chain
from retain.strategies.layerwise_lr import (
    LayerwiseLR,
    layerwise_optimizer,
    layerwise_param_groups,
)
from retain.training.loop import TrainConfig, make_optimizer, train_task
from tiny_models import tiny_bert_config, tiny_llama_config


def _tiny_bert(seed: int = 0) -> nn.Module:
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(100))


def _task(n: int = 16) -> Task:
    g = torch.Generator().manual_seed(1)
    examples = [
        {
            "input_ids": torch.randint(0, 100, (8,), generator=g),
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": torch.randint(0, 2, (), generator=g),
        }
        for _ in range(n)
    ]
    return Task("toy", examples, Classification())


def _names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def test_group_rates_follow_the_formula_for_bert() -> None:
    model = _tiny_bert()
    base, d = 3e-4, 0.8
    groups = layerwise_param_groups(model, base, d)
    assert [g["name"] for g in groups] == ["embeddings", "block.0", "block.1", "head"]
    lrs = {g["name"]: g["lr"] for g in groups}
    # L = 2: embeddings base*d^2, block 0 base*d, block 1 base, head base
    assert lrs == {"embeddings": base * d**2, "block.0": base * d**1, "block.1": base, "head": base}
    names = _names(model)
    members = {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert all(n.startswith("bert.embeddings.") for n in members["embeddings"])
    assert all(n.startswith("bert.encoder.layer.0.") for n in members["block.0"])
    assert all(n.startswith("bert.encoder.layer.1.") for n in members["block.1"])
    assert members["head"] == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }


def test_every_parameter_in_exactly_one_group_frozen_ones_too() -> None:
    model = _tiny_bert()
    model.get_submodule("bert.embeddings").requires_grad_(False)
    groups = layerwise_param_groups(model, 1e-3, 0.9)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}


def test_llama_head_holds_final_norm_and_lm_head() -> None:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config(vocab_size=100))
    groups = {g["name"]: g for g in layerwise_param_groups(model, 1.0, 0.5)}
    names = _names(model)
    assert {names[id(p)] for p in groups["head"]["params"]} == {
        "model.norm.weight",
        "lm_head.weight",
    }
    assert [groups[k]["lr"] for k in ("embeddings", "block.0", "block.1", "head")] == [
        0.25,
        0.5,
        1.0,
        1.0,
    ]


def test_decay_one_trains_exactly_like_plain_fine_tuning() -> None:
    task = _task()
    config = TrainConfig(lr=1e-2, batch_size=4, epochs=2, seed=3, weight_decay=0.01)
    plain, layered = _tiny_bert(), _tiny_bert()
    torch.manual_seed(7)  # dropout draws
    train_task(plain, task, None, config)
    torch.manual_seed(7)
    log = train_task(layered, task, LayerwiseLR(decay=1.0), config)
    assert log.steps == 8
    before = _tiny_bert()
    changed = 0
    for (name, a), b, c in zip(
        plain.named_parameters(), layered.parameters(), before.parameters(), strict=True
    ):
        assert torch.equal(a, b), name
        changed += int(not torch.equal(a, c))
    assert changed > 0  # training did move the weights


def test_smaller_decay_moves_lower_layers_less() -> None:
    """One SGD step: each parameter moves by exactly its group's rate times its gradient."""
    model = _tiny_bert()
    model.eval()  # no dropout, so the reference gradient is the same computation
    task = _task(4)
    batch = task.collate(list(task.examples))
    reference = _tiny_bert()
    reference.eval()
    reference(**batch).loss.backward()
    grads = {n: p.grad for n, p in reference.named_parameters()}
    optimizer = layerwise_optimizer(model, 0.5, 0.5, torch.optim.SGD)
    model(**batch).loss.backward()
    optimizer.step()
    rates = {"embeddings": 0.125, "block.0": 0.25, "block.1": 0.5, "head": 0.5}
    names = _names(model)
    starts = dict(reference.named_parameters())
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            grad = grads[name]
            assert grad is not None, name  # every BERT parameter is used in the forward pass
            expected = starts[name].detach() - rates[group["name"]] * grad
            torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)


def test_layerwise_optimizer_is_a_standard_optimizer() -> None:
    model = _tiny_bert()
    optimizer = layerwise_optimizer(model, 1e-3, 0.9, weight_decay=0.05)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05] * 4
    assert [g["name"] for g in optimizer.param_groups] == [
        "embeddings",
        "block.0",
        "block.1",
        "head",
    ]


def test_make_optimizer_uses_the_strategy_groups() -> None:
    model = _tiny_bert()
    strategy = build_strategy("layerwise_lr", decay=0.5)
    optimizer = make_optimizer(model, chain(strategy), TrainConfig(lr=0.2))
    assert [g["lr"] for g in optimizer.param_groups] == [0.2 * 0.25, 0.2 * 0.5, 0.2, 0.2]
    assert strategy.describe() == "layerwise_lr(decay=0.5, pattern=None)"


def test_lambda_lr_keeps_the_layer_ratios() -> None:
    model = _tiny_bert()
    optimizer = layerwise_optimizer(model, 1e-2, 0.7)
    scheduler = LambdaLR(optimizer, lambda t: min(1.0, (t + 1) / 5))
    for step in range(8):
        factor = min(1.0, (step + 1) / 5)
        expected = [1e-2 * 0.7**2 * factor, 1e-2 * 0.7 * factor, 1e-2 * factor, 1e-2 * factor]
        got = [g["lr"] for g in optimizer.param_groups]
        assert got == pytest.approx(expected, rel=1e-12)
        optimizer.step()
        scheduler.step()


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.01, math.nan, math.inf])
def test_decay_outside_unit_interval_is_refused(decay: float) -> None:
    with pytest.raises(RetainError, match=r"decay must be in \(0, 1\]"):
        LayerwiseLR(decay=decay)
    with pytest.raises(RetainError, match=r"decay must be in \(0, 1\]"):
        layerwise_param_groups(_tiny_bert(), 1e-3, decay)


def test_bad_learning_rate_is_refused() -> None:
    with pytest.raises(RetainError, match="learning rate"):
        layerwise_param_groups(_tiny_bert(), 0.0, 0.9)
