"""Classification accuracy equals a manual argmax over unpadded single-text forwards."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from sklearn.metrics import f1_score
from transformers import (
    BertForSequenceClassification,
    LlamaForSequenceClassification,
)

from retain.errors import RetainError
from retain.evaluation.accuracy import ClassificationAccuracy, per_class_accuracy
from tiny_models import bert_tokenizer, tiny_bert_config, tiny_llama_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "I loved this film.",
    "Terrible, a waste of two hours and of a perfectly good evening.",
    "It was fine.",
    "Great acting, weak plot.",
    "Boring.",
    "An absolute masterpiece of modern cinema, with a score to remember.",
    "Meh.",
    "I would watch it again tomorrow.",
]
LABELS = [0, 1, 2, 0, 1, 0, 2, 1]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return bert_tokenizer(bos=False)


@pytest.fixture(scope="module")
def bert(tokenizer: Any) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = tiny_bert_config(len(tokenizer), num_labels=3)
    return BertForSequenceClassification(config).eval()


def manual_predictions(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    with torch.no_grad():
        return [
            int(model(input_ids=torch.tensor([tokenizer(t)["input_ids"]])).logits.argmax())
            for t in TEXTS
        ]


def test_bert_accuracy_equals_manual_argmax(bert: torch.nn.Module, tokenizer: Any) -> None:
    probe = ClassificationAccuracy("toy", TEXTS, LABELS, batch_size=3)
    assert (probe.metric, probe.higher_is_better) == ("accuracy", True)
    manual = manual_predictions(bert, tokenizer)
    assert probe.predict(bert, tokenizer) == manual
    result = probe.evaluate(bert, tokenizer)
    assert result.score == pytest.approx(
        sum(m == y for m, y in zip(manual, LABELS, strict=True)) / len(LABELS)
    )
    assert result.details["n"] == len(TEXTS)
    assert result.details["macro_f1"] == pytest.approx(f1_score(LABELS, manual, average="macro"))
    assert result.details["per_class_accuracy"] == per_class_accuracy(LABELS, manual)


def test_decoder_head_with_right_padding_equals_manual_argmax(tokenizer: Any) -> None:
    torch.manual_seed(1)
    config = tiny_llama_config(len(tokenizer), num_labels=3, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForSequenceClassification(config).eval()
    probe = ClassificationAccuracy("toy", TEXTS, LABELS, batch_size=8)
    assert probe.predict(model, tokenizer) == manual_predictions(model, tokenizer)


def test_per_class_accuracy_keys() -> None:
    assert per_class_accuracy([0, 0, 1], [0, 1, 1]) == {"0": 0.5, "1": 1.0}
    assert per_class_accuracy([0, 0, 1], [0, 1, 1], ["neg", "pos"]) == {"neg": 0.5, "pos": 1.0}


def test_label_names_key_the_details(bert: torch.nn.Module, tokenizer: Any) -> None:
    probe = ClassificationAccuracy("toy", TEXTS, LABELS, label_names=["pos", "neg", "mid"])
    details = probe.evaluate(bert, tokenizer).details
    assert set(details["per_class_accuracy"]) == {"pos", "neg", "mid"}


def test_label_count_mismatch_is_a_retain_error(bert: torch.nn.Module, tokenizer: Any) -> None:
    with pytest.raises(RetainError, match="label 2 has no name"):
        ClassificationAccuracy("toy", TEXTS, LABELS, label_names=["a", "b"])
    binary = ClassificationAccuracy("toy", TEXTS, [y % 2 for y in LABELS], label_names=["a", "b"])
    with pytest.raises(RetainError, match="num_labels=2"):
        binary.evaluate(bert, tokenizer)
    with pytest.raises(RetainError, match="num_labels=4"):
        ClassificationAccuracy("toy", TEXTS, [*LABELS[:-1], 3]).evaluate(bert, tokenizer)
    four = ClassificationAccuracy("toy", TEXTS, LABELS, label_names=["a", "b", "c", "d"])
    with pytest.raises(RetainError, match="num_labels=4"):
        four.evaluate(bert, tokenizer)


def test_bad_inputs_are_retain_errors() -> None:
    with pytest.raises(RetainError, match="labels"):
        ClassificationAccuracy("toy", TEXTS, LABELS[:-1])
    with pytest.raises(RetainError, match="empty"):
        ClassificationAccuracy("toy", [], [])
    with pytest.raises(RetainError, match="negative"):
        ClassificationAccuracy("toy", TEXTS, [-1] * len(TEXTS))
