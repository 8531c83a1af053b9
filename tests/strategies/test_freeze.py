"""freeze: matching parameters (or all others) get no update; bad patterns fail clearly."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import nn

from retain.data.task import Task
from retain.errors import RetainError
from retain.strategies.base import build_strategy
from retain.strategies.chain import chain
from retain.strategies.freeze import Freeze
from retain.strategies.peft_adapters import LoRA
from retain.training.loop import TrainConfig, train_task
from tiny_models import tiny_bert_config

CONFIG = TrainConfig(lr=1e-2, batch_size=8, epochs=1, weight_decay=0.01)


def tiny_classifier() -> Any:
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    config = tiny_bert_config(
        vocab_size=100, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3
    )
    return BertForSequenceClassification(config)


def random_task(n: int = 32) -> Task:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (n, 8), generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return Task("t", [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)])


def train_and_compare(model: nn.Module, strategy: Any) -> dict[str, bool]:
    """Train one task; ``{name: changed}`` for every parameter."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_task(model, random_task(), strategy, CONFIG)
    return {n: not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters()}


def test_freeze_mode_keeps_matching_parameters_bitwise() -> None:
    pattern = r"embeddings\.|encoder\.layer\.0\."
    strategy = build_strategy("freeze", params=pattern)
    model = strategy.prepare(tiny_classifier())
    matched = {n for n, _ in model.named_parameters() if re.search(pattern, n)}
    assert len(matched) > 10
    for name, p in model.named_parameters():
        assert p.requires_grad == (name not in matched), name
    changed = train_and_compare(model, strategy)
    assert not any(changed[n] for n in matched)
    # with weight decay every trainable weight moves; LayerNorm/bias too (random labels)
    assert all(changed[n] for n in changed if n not in matched)


def test_train_only_mode_freezes_everything_else() -> None:
    strategy = Freeze(params="classifier", mode="train_only")
    model = strategy.prepare(tiny_classifier())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}
    changed = train_and_compare(model, strategy)
    assert {n for n, c in changed.items() if c} == trainable


def test_train_only_after_lora_narrows_the_adapters() -> None:
    strategies = chain(LoRA(r=2), Freeze(params=r"layer\.1\.", mode="train_only"))
    model = strategies.prepare(tiny_classifier())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(".lora_" in n and "layer.1." in n for n in trainable)
    changed = train_and_compare(model, strategies)
    assert {n for n, c in changed.items() if c} == trainable


def test_bad_patterns() -> None:
    with pytest.raises(RetainError, match="freeze params 'decoder' matches no parameter"):
        Freeze(params="decoder").prepare(tiny_classifier())
    with pytest.raises(RetainError, match="leaves no trainable parameter"):
        Freeze(params=".").prepare(tiny_classifier())
    with pytest.raises(RetainError, match="not a valid regular expression"):
        Freeze(params="(").prepare(tiny_classifier())
    with pytest.raises(RetainError, match="mode 'only'"):
        Freeze(params="x", mode="only")  # type: ignore[arg-type]
