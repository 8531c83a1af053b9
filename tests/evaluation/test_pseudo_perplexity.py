"""Pseudo-perplexity: batching changes nothing, and a hand-set model gives the expected value."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import BertForMaskedLM

from retain.errors import RetainError
from retain.evaluation.pseudo_perplexity import PseudoPerplexity, masked_token_log_probs
from tiny_models import bert_tokenizer, tiny_bert_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hi.",
    "Masked language models score each token given all the others.",
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return bert_tokenizer(bos=False)


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> BertForMaskedLM:
    torch.manual_seed(0)
    config = tiny_bert_config(len(tokenizer))
    return BertForMaskedLM(config).eval()


class FixedDistributionLM(torch.nn.Module):
    """Ignores its input: every position predicts the same hand-set distribution."""

    def __init__(self, log_probs: torch.Tensor) -> None:
        super().__init__()
        self.log_probs = torch.nn.Parameter(log_probs, requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.log_probs.expand(*input_ids.shape, -1))


def naive_log_probs(model: torch.nn.Module, tokenizer: Any, text: str) -> list[float]:
    enc = tokenizer(text, return_special_tokens_mask=True)
    out = []
    with torch.no_grad():
        for i, special in enumerate(enc["special_tokens_mask"]):
            if special:
                continue
            ids = torch.tensor([enc["input_ids"]])
            ids[0, i] = tokenizer.mask_token_id
            logits = model(input_ids=ids).logits[0, i]
            out.append(float(torch.log_softmax(logits.double(), -1)[enc["input_ids"][i]]))
    return out


@pytest.mark.parametrize("batch_size", [5, 64])
def test_batched_equals_one_mask_at_a_time(
    model: torch.nn.Module, tokenizer: Any, batch_size: int
) -> None:
    batched = masked_token_log_probs(model, tokenizer, TEXTS, batch_size=batch_size)
    for text, scores in zip(TEXTS, batched, strict=True):
        assert scores == pytest.approx(naive_log_probs(model, tokenizer, text), abs=1e-4)


def test_probe_score_is_exp_of_mean_nll(model: torch.nn.Module, tokenizer: Any) -> None:
    probe = PseudoPerplexity("toy", TEXTS, batch_size=7)
    assert (probe.metric, probe.higher_is_better) == ("pseudo_perplexity", False)
    model.train()
    result = probe.evaluate(model, tokenizer)
    assert model.training
    model.eval()
    naive = [v for t in TEXTS for v in naive_log_probs(model, tokenizer, t)]
    assert result.details["n_tokens"] == len(naive)
    assert result.score == pytest.approx(math.exp(-sum(naive) / len(naive)), rel=1e-4)


def test_hand_set_distribution_gives_the_expected_pppl(tokenizer: Any) -> None:
    text = "the cat the cat dog"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    the, cat, dog = ids[0], ids[1], ids[4]
    probs = torch.full((len(tokenizer),), 0.0)
    probs[[the, cat, dog]] = torch.tensor([0.5, 0.25, 0.125])
    probs[tokenizer.pad_token_id] = 0.125  # the rest of the mass, on a token never scored
    fixed = FixedDistributionLM(torch.log(probs.clamp_min(1e-30)))
    result = PseudoPerplexity("toy", [text]).evaluate(fixed, tokenizer)
    # log p = 2 ln(1/2) + 2 ln(1/4) + ln(1/8) = -(2 + 4 + 3) ln 2 over 5 tokens.
    assert result.score == pytest.approx(2 ** (9 / 5))
    uniform = FixedDistributionLM(torch.zeros(len(tokenizer)))
    assert PseudoPerplexity("u", TEXTS).evaluate(uniform, tokenizer).score == pytest.approx(
        len(tokenizer)
    )


def test_tokenizer_without_mask_token_is_a_retain_error(model: torch.nn.Module) -> None:
    tok = SimpleNamespace(mask_token_id=None)
    with pytest.raises(RetainError, match="mask token"):
        PseudoPerplexity("toy", TEXTS).evaluate(model, tok)


def test_empty_texts_is_a_retain_error() -> None:
    with pytest.raises(RetainError, match="empty"):
        PseudoPerplexity("toy", [])
