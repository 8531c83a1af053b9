"""Text tasks: tokenised examples, label mapping, packing, padding that never counts in the loss."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from torch.nn import functional
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from retain.data.task import IGNORE_INDEX, CausalLM, Classification, batch_loss, pad_collate
from retain.data.text import causal_lm_task, pad_id, text_classification_task
from retain.errors import RetainError
from tiny_models import bert_tokenizer, tiny_llama_config

WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "from", "home"]


def word_tokenizer(eos: bool = True) -> Any:
    """A GPT-2-style word tokenizer: eos (id 0) but no pad token; ids 2.. follow WORDS."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<eos>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"eos_token": "<eos>"} if eos else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **extra)


def ids(text: str) -> list[int]:
    return [WORDS.index(w) + 2 for w in text.split()]


@pytest.fixture(scope="module")
def bert_tok() -> Any:
    return bert_tokenizer()


def test_classification_examples_are_the_tokenizers_own_truncated_encoding(bert_tok: Any) -> None:
    texts = ["What is the capital of France?", "spam " * 50, "Who wrote Hamlet?"]
    task = text_classification_task("q", bert_tok, texts, [2, 0, 1], max_length=16)
    assert task.texts == texts
    assert task.num_labels == 3
    assert task.label_names is None
    assert isinstance(task.objective, Classification)
    for text, label, ex in zip(texts, [2, 0, 1], task.examples, strict=True):
        ref = bert_tok(text, truncation=True, max_length=16)
        assert ex["input_ids"].tolist() == ref["input_ids"]
        assert ex["token_type_ids"].tolist() == ref["token_type_ids"]
        assert ex["attention_mask"].tolist() == ref["attention_mask"]
        assert ex["labels"].dim() == 0
        assert ex["labels"].dtype == torch.long
        assert int(ex["labels"]) == label
    assert len(task.examples[1]["input_ids"]) == 16  # truncated, not padded
    assert len(task.examples[2]["input_ids"]) < 16
    batch = task.collate(list(task.examples))
    assert batch["input_ids"].shape == (3, 16)
    n = len(task.examples[2]["input_ids"])
    assert batch["input_ids"][2, n:].eq(bert_tok.pad_token_id).all()
    assert batch["attention_mask"][2, n:].eq(0).all()
    assert batch["labels"].tolist() == [2, 0, 1]


def test_string_labels_map_to_ids_in_sorted_order(bert_tok: Any) -> None:
    task = text_classification_task(
        "s", bert_tok, ["a", "b", "c", "d"], ["spam", "ham", "spam", "eggs"]
    )
    assert task.label_names == ("eggs", "ham", "spam")
    assert task.label_to_id == {"eggs": 0, "ham": 1, "spam": 2}
    assert [int(ex["labels"]) for ex in task.examples] == [2, 1, 2, 0]
    assert task.num_labels == 3
    wider = text_classification_task("s", bert_tok, ["a", "b"], ["x", "y"], num_labels=5)
    assert wider.num_labels == 5
    assert wider.with_examples(wider.examples[:1]).label_names == ("x", "y")


@pytest.mark.parametrize(
    ("texts", "labels", "kwargs", "needle"),
    [
        ([], [], {}, "texts is empty"),
        (["a", "b"], [0], {}, "2 texts but 1 labels"),
        (["a", "b"], [0, 3], {"num_labels": 3}, "label 3 (example 1) is outside [0, 3)"),
        (["a", "b"], [0, -1], {}, "label -1"),
        (["a", 7], [0, 1], {}, "text 1 is a int"),
        ("a text", [0], {}, "texts is one string"),
        (["a", "b"], [0, "x"], {}, "all ints"),
        (["a", "b", "c"], ["x", "y", "z"], {"num_labels": 2}, "do not fit num_labels=2"),
        (["a"], [0], {"max_length": 0}, "max_length must be"),
    ],
)
def test_classification_mistakes_are_one_line_retain_errors(
    bert_tok: Any, texts: Any, labels: Any, kwargs: dict[str, Any], needle: str
) -> None:
    with pytest.raises(RetainError) as info:
        text_classification_task("t", bert_tok, texts, labels, **kwargs)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_tokenizer_without_pad_uses_eos_logs_once_and_is_not_changed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tok = word_tokenizer()
    assert tok.pad_token is None
    with caplog.at_level(logging.INFO, logger="retain.data.text"):
        task = text_classification_task("c", tok, ["the cat", "a dog ran far"], [0, 1])
        causal_lm_task("lm", tok, ["the cat sat", "a dog"], block_size=2)
    assert tok.pad_token is None
    assert tok.pad_token_id is None
    logged = [r for r in caplog.records if "no pad token" in r.getMessage()]
    assert len(logged) == 1
    batch = task.collate(list(task.examples))
    assert batch["input_ids"][0].tolist() == [*ids("the cat"), 0, 0]  # eos id 0 pads
    assert batch["attention_mask"][0].tolist() == [1, 1, 0, 0]


def test_tokenizer_without_pad_and_eos_is_refused_with_the_fix() -> None:
    with pytest.raises(RetainError, match=r"tokenizer\.pad_token = "):
        text_classification_task("c", word_tokenizer(eos=False), ["the cat"], [0])
    with pytest.raises(RetainError, match="neither a pad nor an eos"):
        pad_id(word_tokenizer(eos=False))


def test_packing_joins_texts_with_eos_and_drops_the_partial_block() -> None:
    task = causal_lm_task("lm", word_tokenizer(), ["the cat sat", "a dog", "ran"], block_size=3)
    stream = [*ids("the cat sat"), 0, *ids("a dog"), 0, *ids("ran"), 0]  # 9 tokens
    assert [ex["input_ids"].tolist() for ex in task.examples] == [
        stream[0:3],
        stream[3:6],
        stream[6:9],
    ]
    shorter = causal_lm_task("lm", word_tokenizer(), ["the cat sat", "a dog", "ran"], block_size=4)
    assert [ex["input_ids"].tolist() for ex in shorter.examples] == [stream[0:4], stream[4:8]]
    for ex in task.examples:
        assert torch.equal(ex["labels"], ex["input_ids"])
        assert ex["attention_mask"].eq(1).all()
    assert isinstance(task.objective, CausalLM)
    assert task.texts == ["the cat sat", "a dog", "ran"]


def test_packing_refuses_text_shorter_than_one_block() -> None:
    with pytest.raises(RetainError, match=r"give 3 tokens, less than one block of block_size=8"):
        causal_lm_task("lm", word_tokenizer(), ["the cat"], block_size=8)


def test_unpacked_examples_are_truncated_texts_with_eos() -> None:
    task = causal_lm_task(
        "lm", word_tokenizer(), ["the cat sat on a mat", "a dog"], block_size=4, pack=False
    )
    assert [ex["input_ids"].tolist() for ex in task.examples] == [
        ids("the cat sat on"),  # cut: no eos
        [*ids("a dog"), 0],
    ]
    with pytest.raises(RetainError, match="needs at least 2"):
        causal_lm_task("lm", word_tokenizer(), ["cat", ""], block_size=4, pack=False)


def test_padded_causal_batch_loss_is_the_models_loss_over_real_tokens_only() -> None:
    tok = word_tokenizer()
    texts = ["the cat sat on a mat", "a dog ran", "the dog ran far away from home and"]
    task = causal_lm_task("lm", tok, texts, block_size=6, pack=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tok))).eval()
    batch = task.collate(list(task.examples))
    assert batch["labels"][1, 4:].eq(IGNORE_INDEX).all()  # "a dog ran" + eos, then padding
    ours = batch_loss(task.objective, model, batch)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    theirs = model(**inputs, labels=batch["labels"]).loss
    assert torch.allclose(ours, theirs, atol=1e-6)
    # Independent reference: each example alone, unpadded; token-weighted mean of next-token NLL.
    nll, count = 0.0, 0
    with torch.no_grad():
        for ex in task.examples:
            seq = ex["input_ids"]
            logits = model(input_ids=seq[None]).logits[0, :-1]
            nll += float(functional.cross_entropy(logits, seq[1:], reduction="sum"))
            count += len(seq) - 1
    assert abs(ours.item() - nll / count) < 1e-5
    # The pad id does not matter: padding with another token gives the same loss.
    other = pad_collate(5)(list(task.examples))
    assert not torch.equal(other["input_ids"], batch["input_ids"])
    assert torch.allclose(batch_loss(task.objective, model, other), ours, atol=1e-6)
