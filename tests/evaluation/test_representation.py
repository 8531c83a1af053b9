"""Pooled embeddings ignore padding; kNN and linear probes separate separable data, reproducibly."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, LlamaForCausalLM

from retain.errors import RetainError
from retain.evaluation.representation import KNNProbe, LinearProbe, pooled_embeddings
from tiny_models import bert_tokenizer, tiny_bert_config, tiny_llama_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FRUIT = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]
VEHICLES = ["car", "truck", "train", "bus", "bicycle", "boat", "plane", "tractor"]


def synthetic_split(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Texts of 3-6 words drawn from one of two disjoint word lists; the list is the label."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        words = FRUIT if i % 2 == 0 else VEHICLES
        texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 6))))
        labels.append(i % 2)
    return texts, labels


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return bert_tokenizer(bos=False)


@pytest.fixture(scope="module")
def encoder(tokenizer: Any) -> BertModel:
    torch.manual_seed(0)
    config = tiny_bert_config(len(tokenizer))
    return BertModel(config).eval()


@pytest.fixture(scope="module")
def decoder(tokenizer: Any) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = tiny_llama_config(len(tokenizer))
    return LlamaForCausalLM(config).eval()


SHORT = "a short text"
LONG = "a much longer text that forces the short one to be padded in the same batch"


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
@pytest.mark.parametrize("which", ["encoder", "decoder"])
def test_pooling_ignores_padding(
    request: pytest.FixtureRequest, tokenizer: Any, which: str, pooling: Any
) -> None:
    model = request.getfixturevalue(which)
    alone = pooled_embeddings(model, tokenizer, [SHORT], pooling=pooling)
    batched = pooled_embeddings(model, tokenizer, [SHORT, LONG], pooling=pooling)
    assert batched.shape == (2, 32)
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-5)


def test_pooling_matches_hand_computed_hidden_states(
    encoder: torch.nn.Module, tokenizer: Any
) -> None:
    ids = torch.tensor([tokenizer(SHORT)["input_ids"]])
    with torch.no_grad():
        states = encoder(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in (0, 1, -1):
        h = states[layer][0].numpy()
        for pooling, expected in (("mean", h.mean(0)), ("cls", h[0]), ("last", h[-1])):
            got = pooled_embeddings(
                encoder, tokenizer, [LONG, SHORT], pooling=pooling, layer=layer
            )[1]
            np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bad_pooling_and_layer_are_retain_errors(encoder: torch.nn.Module, tokenizer: Any) -> None:
    with pytest.raises(RetainError, match="pooling"):
        pooled_embeddings(encoder, tokenizer, [SHORT], pooling="max")  # type: ignore[arg-type]
    with pytest.raises(RetainError, match="layer=7"):
        pooled_embeddings(encoder, tokenizer, [SHORT], layer=7)


@pytest.mark.parametrize("probe_class", [KNNProbe, LinearProbe])
def test_probes_separate_separable_data_deterministically(
    encoder: torch.nn.Module, tokenizer: Any, probe_class: Any
) -> None:
    train_texts, train_labels = synthetic_split(40, seed=0)
    test_texts, test_labels = synthetic_split(20, seed=1)
    probe = probe_class("toy", train_texts, train_labels, test_texts, test_labels)
    assert probe.higher_is_better
    assert probe.metric in ("knn_accuracy", "linear_probe_accuracy")
    before = [p.detach().clone() for p in encoder.parameters()]
    first = probe.evaluate(encoder, tokenizer)
    assert all(
        torch.equal(a, b) for a, b in zip(before, encoder.parameters(), strict=True)
    )  # frozen
    assert first.score >= 0.9
    assert first.details["n_train"] == 40
    assert first.details["n_test"] == 20
    assert first.details["macro_f1"] >= 0.9
    assert probe.evaluate(encoder, tokenizer) == first


def test_knn_details(encoder: torch.nn.Module, tokenizer: Any) -> None:
    texts, labels = synthetic_split(6, seed=0)
    result = KNNProbe("toy", texts, labels, texts, labels, k=10).evaluate(encoder, tokenizer)
    assert result.details["k"] == 6  # capped at the train size
    assert result.details["pooling"] == "mean"
    assert result.details["layer"] == -1


def test_single_class_train_split_is_a_retain_error() -> None:
    with pytest.raises(RetainError, match="single class"):
        LinearProbe("toy", ["a", "b"], [0, 0], ["c"], [0])


def test_embeddings_are_reused_only_while_the_weights_are_unchanged(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One suite evaluation embeds each text set once for its kNN and linear probes; the next
    evaluation (after training changed the weights) embeds again, and so does a probe alone."""
    from retain.evaluation import representation
    from retain.evaluation.suite import EvalSuite

    tok = tokenizer
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).eval()
    texts, labels = ["a cat", "a dog", "the sun", "the moon"], [0, 0, 1, 1]
    knn = KNNProbe("k", texts, labels, texts, labels, k=1)
    linear = LinearProbe("l", texts, labels, texts, labels)
    calls = []
    real = representation.pooled_embeddings

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(representation, "pooled_embeddings", counted)
    suite = EvalSuite("s", [knn, linear])
    shared = suite.evaluate(model, tok)
    assert len(calls) == 1  # same texts, same weights: embedded once
    assert shared.scores["l"].score == linear.evaluate(model, tok).score  # the same vectors
    calls.clear()
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.mul_(2.0)
    suite.evaluate(model, tok)
    assert len(calls) == 1  # a new evaluation: embedded again
    knn.evaluate(model, tok)
    assert len(calls) == 3  # outside an evaluation nothing is kept: train and test, each
