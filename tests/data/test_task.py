"""Objectives give Hugging Face's own loss; per-sample losses average each sample's positions."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertForSequenceClassification, LlamaForCausalLM

from retain.data.task import (
    IGNORE_INDEX,
    CausalLM,
    Classification,
    Task,
    batch_loss,
    pad_collate,
    per_sample_loss,
    stack_collate,
)
from retain.errors import RetainError
from tiny_models import tiny_bert_config, tiny_llama_config


def test_classification_loss_equals_the_models_own_loss() -> None:
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(100, num_labels=3)).eval()
    batch = {
        "input_ids": torch.randint(5, 100, (4, 9)),
        "attention_mask": torch.ones(4, 9, dtype=torch.long),
        "labels": torch.tensor([0, 2, 1, 1]),
    }
    ours = batch_loss(Classification(), model, batch)
    assert torch.allclose(ours, model(**batch).loss, atol=1e-6)


def test_causal_lm_loss_equals_the_models_own_loss_with_padding() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(50)).eval()
    examples = [{"input_ids": torch.randint(1, 50, (n,))} for n in (7, 4, 9)]
    for ex in examples:
        ex["labels"] = ex["input_ids"].clone()
    batch = pad_collate(0)(examples)
    assert batch["labels"][1, 4:].eq(IGNORE_INDEX).all()
    assert batch["attention_mask"].sum().item() == 20
    ours = batch_loss(CausalLM(), model, batch)
    assert torch.allclose(ours, model(**batch).loss, atol=1e-6)


def test_causal_lm_without_labels_masks_padding_from_attention_mask() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(50)).eval()
    batch = pad_collate(0)([{"input_ids": torch.randint(1, 50, (n,))} for n in (6, 3)])
    _, targets = CausalLM().logits_and_targets(model, batch)
    assert targets.shape == (2, 5)
    assert targets[1, 2:].eq(IGNORE_INDEX).all()
    assert targets[0].ne(IGNORE_INDEX).all()


def test_per_sample_loss_is_the_mean_over_each_samples_positions() -> None:
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, 2, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 4]])
    by_hand = torch.stack(
        [
            (
                nn.functional.cross_entropy(logits[0, 0:1], targets[0, 0:1])
                + nn.functional.cross_entropy(logits[0, 1:2], targets[0, 1:2])
            )
            / 2,
            nn.functional.cross_entropy(logits[1, 2:3], targets[1, 2:3]),
        ]
    )
    assert torch.allclose(per_sample_loss(logits, targets), by_hand, atol=1e-6)


def test_plain_module_returning_a_tensor_works() -> None:
    model = nn.Linear(4, 3)

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return self.inner(pixel_values)

    batch = stack_collate([{"pixel_values": torch.randn(4), "labels": torch.tensor(1)}] * 2)
    logits, targets = Classification().logits_and_targets(Wrapped(), batch)
    assert logits.shape == (2, 3)
    assert targets.tolist() == [1, 1]


def test_bad_inputs_are_named() -> None:
    with pytest.raises(RetainError, match="no training examples"):
        Task("empty", [])
    with pytest.raises(RetainError, match="no 'labels' column"):
        Classification().logits_and_targets(nn.Linear(2, 2), {"x": torch.zeros(1, 2)})
    with pytest.raises(RetainError, match="empty list"):
        stack_collate([])


def test_batches_cover_the_examples_in_order() -> None:
    task = Task("t", [{"x": torch.tensor([float(i)])} for i in range(5)])
    batches = task.batches(2)
    assert [b["x"].flatten().tolist() for b in batches] == [[0.0, 1.0], [2.0, 3.0], [4.0]]
    assert len(task.batches(2, limit=3)) == 2
    assert [task.batch_count(2), task.batch_count(2, limit=3), task.batch_count(5)] == [3, 2, 1]
    assert task.batch(1, 2)["x"].flatten().tolist() == [2.0, 3.0]
    assert task.batch(1, 2, limit=3)["x"].flatten().tolist() == [2.0]
    with pytest.raises(IndexError):
        task.batch(3, 2)


def test_pad_collate_stacks_one_label_per_example() -> None:
    batch = pad_collate(0)(
        [
            {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor(1)},
            {"input_ids": torch.tensor([8]), "labels": torch.tensor(2)},
        ]
    )
    assert batch["labels"].tolist() == [1, 2]
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_pad_collate_pads_every_per_token_key_and_accepts_lists() -> None:
    batch = pad_collate(7)(
        [
            {"input_ids": [1, 2, 3], "token_type_ids": [0, 0, 0], "labels": 2},
            {"input_ids": [4], "token_type_ids": [0], "labels": 0},
        ]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert batch["labels"].tolist() == [2, 0]


def test_ragged_examples_without_pad_collate_say_how_to_fix_it() -> None:
    with pytest.raises(RetainError, match="pad_collate"):
        stack_collate([{"input_ids": torch.ones(3)}, {"input_ids": torch.ones(2)}])


def test_a_label_outside_the_head_names_num_labels() -> None:
    model = BertForSequenceClassification(tiny_bert_config(100, num_labels=2)).eval()
    batch = {"input_ids": torch.randint(5, 100, (2, 4)), "labels": torch.tensor([1, 3])}
    with pytest.raises(RetainError, match=r"label 3 is outside the head's 2 classes.*num_labels"):
        batch_loss(Classification(), model, batch)


def test_causal_lm_objective_on_a_classifier_is_refused() -> None:
    model = BertForSequenceClassification(tiny_bert_config(100, num_labels=2)).eval()
    with pytest.raises(RetainError, match="needs a causal LM"):
        CausalLM().logits_and_targets(model, {"input_ids": torch.randint(5, 100, (2, 4))})


def test_pad_collates_of_one_pad_id_are_equal_so_tasks_can_share_a_batch() -> None:
    import pickle

    assert pad_collate(0) == pad_collate(0)
    assert pad_collate(0) != pad_collate(2)
    assert pickle.loads(pickle.dumps(pad_collate(3))) == pad_collate(3)  # DataLoader workers
