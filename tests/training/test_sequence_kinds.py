"""fit_sequence on each task kind: one head per task, a causal LM, and the monitor in a sequence."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from transformers import BertModel, LlamaForCausalLM

from retain.assets.mlp import MLP
from retain.data.permuted import TaskSplit, permuted_image_tasks
from retain.data.task_heads import TaskHeads
from retain.data.text import causal_lm_task, text_classification_task
from retain.evaluation.task_accuracy import negative_loss, task_accuracy, task_loss
from retain.training.loop import TrainConfig, train_task
from retain.training.monitor import MonitorConfig
from retain.training.sequence import fit_sequence
from tiny_models import bert_tokenizer, tiny_bert_config, tiny_llama_config

WORDS = {
    "sport": (["goal", "match", "team", "score", "league"], ["coach", "season", "player"]),
    "food": (["bread", "soup", "salad", "cheese", "cake"], ["spice", "oven", "recipe"]),
    "city": (["street", "bridge", "tower", "market", "harbor"], ["traffic", "mayor", "park"]),
}


@pytest.fixture(scope="module")
def tok() -> Any:
    return bert_tokenizer()


def topic_split(tok: Any, name: str, classes: int, n: int = 48, seed: int = 0) -> TaskSplit:
    """Sentences whose label is which word list they draw from (learnable, not trivial)."""
    g = torch.Generator().manual_seed(seed)
    lists = list(WORDS.values())[:classes]
    texts, labels = [], []
    for i in range(n):
        label = i % classes
        words = lists[label][0] + lists[label][1]
        picks = torch.randint(0, len(words), (5,), generator=g).tolist()
        texts.append(" ".join(words[p] for p in picks))
        labels.append(label)
    half = n * 3 // 4

    def task(lo: int, hi: int) -> Any:
        return text_classification_task(name, tok, texts[lo:hi], labels[lo:hi], num_labels=classes)

    return TaskSplit(task(0, half), task(half, n))


def heads_model(tok: Any) -> TaskHeads:
    torch.manual_seed(0)
    encoder = BertModel(tiny_bert_config(tok.vocab_size, hidden_dropout_prob=0.0))
    return TaskHeads(encoder, 32, {"a": 3, "b": 2}, dropout=0.0)


def test_one_head_per_task_is_routed_for_training_and_scoring(tok: Any) -> None:
    splits = [topic_split(tok, "a", 3), topic_split(tok, "b", 2, seed=1)]
    config = TrainConfig(lr=3e-3, batch_size=8, epochs=3)
    model, result = fit_sequence(heads_model(tok), splits, None, config)
    assert isinstance(model, TaskHeads)
    # Scores go through each task's own head: recompute R[1] by routing by hand.
    model.use_task("a")
    a = task_accuracy(model, splits[0].test)
    model.use_task("b")
    b = task_accuracy(model, splits[1].test)
    assert result.matrix[1] == [a, b]
    assert result.matrix[0][0] > result.baseline[0] + 0.3  # task a was learned through head a
    # Training b never touched a's head: a by-hand run with b's head frozen gives the same weights.
    by_hand = heads_model(tok)
    torch.manual_seed(config.seed)
    by_hand.use_task("a")
    train_task(by_hand, splits[0].train, None, TrainConfig(**{**config.__dict__, "seed": 0}))
    head_a = copy.deepcopy(by_hand.heads["a"].state_dict())
    by_hand.use_task("b")
    train_task(by_hand, splits[1].train, None, TrainConfig(**{**config.__dict__, "seed": 1}))
    for key, value in head_a.items():
        assert torch.equal(model.heads["a"].state_dict()[key], value)


def test_causal_lm_sequence_scores_minus_the_loss(tok: Any) -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tok.vocab_size))
    texts = {
        "sport": [" ".join(WORDS["sport"][0] * 3)] * 6,
        "food": [" ".join(WORDS["food"][0] * 3)] * 6,
    }
    splits = [
        TaskSplit(
            causal_lm_task(name, tok, lines, block_size=8),
            causal_lm_task(name, tok, lines[:2], block_size=8),
        )
        for name, lines in texts.items()
    ]
    _, result = fit_sequence(
        model, splits, None, TrainConfig(lr=1e-2, batch_size=4, epochs=4), score=negative_loss
    )
    for t in range(2):
        assert result.matrix[t][t] > result.baseline[t] + 0.5  # nats per token gained
    assert result.metrics.backward_transfer < 0  # learning food forgets sport
    assert result.matrix[1][1] == pytest.approx(-task_loss(model, splits[1].test))
    assert math.exp(-result.matrix[1][0]) > math.exp(-result.matrix[0][0])  # perplexity rose


def test_monitor_watches_earlier_tasks_and_rolls_back() -> None:
    splits = permuted_image_tasks("digits", 2, seed=0)  # a shared head: domain-incremental
    config = TrainConfig(lr=3e-3, batch_size=32)

    def model() -> MLP:
        torch.manual_seed(0)
        return MLP(64, [32], 10)

    _, naive = fit_sequence(model(), splits, None, config)
    assert naive.matrix[1][0] < 0.8 * naive.matrix[0][0]  # naive forgets task 0 badly
    budget = MonitorConfig(max_degradation=0.05, eval_every=5)
    _, guarded = fit_sequence(model(), splits, None, config, monitor=budget)
    first, second = guarded.logs
    assert first.monitor is None  # nothing to watch while learning the first task
    name = f"task/{splits[0].train.name}"
    history = second.monitor.history
    assert history[0].scores[name] == pytest.approx(naive.matrix[0][0])
    assert second.stopped
    assert f"{name!r} degraded" in second.stop_reason
    assert second.steps < naive.logs[1].steps
    # The best within-budget weights were restored: task 0 is within 5 % of where it was.
    assert second.monitor.restored
    assert guarded.matrix[1][0] >= 0.95 * guarded.matrix[0][0]
