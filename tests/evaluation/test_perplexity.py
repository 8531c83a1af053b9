"""Strided perplexity agrees with a naive token-by-token reference on a tiny random Llama."""

from __future__ import annotations

import math
import os
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from retain.errors import RetainError
from retain.evaluation.base import ProbeResult
from retain.evaluation.perplexity import Perplexity, strided_log_likelihood, window_spans
from tiny_models import bert_tokenizer, tiny_llama_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Hi.",
    "Catastrophic forgetting: a fine-tuned model loses skills it had before, sometimes quickly "
    "and sometimes slowly, depending on the learning rate and the data.",
    "Short text here",
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return bert_tokenizer(bos=True)


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = tiny_llama_config(len(tokenizer), max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def naive_nll(
    model: torch.nn.Module, seq: list[int], max_length: int, stride: int
) -> tuple[float, int]:
    """Feed ``seq[begin(t):t]`` alone, unpadded, for every scored target ``t``."""
    total, count = 0.0, 0
    with torch.no_grad():
        for begin, target_start, end in window_spans(len(seq), max_length, stride):
            for t in range(target_start, end):
                ids = torch.tensor([seq[begin:t]])
                logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1]
                total -= float(torch.log_softmax(logits.double(), -1)[seq[t]])
                count += 1
    return total, count


def reference(
    model: torch.nn.Module, tokenizer: Any, texts: list[str], max_length: int, stride: int
) -> tuple[float, int]:
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        nll, n = naive_nll(model, [tokenizer.bos_token_id, *ids], max_length, stride)
        total, count = total + nll, count + n
    return total, count


def test_window_spans_match_the_docstring_drawing() -> None:
    assert window_spans(10, 4, 2) == [(0, 1, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)]
    assert window_spans(10, 4, 4) == [(0, 1, 4), (4, 5, 8), (8, 9, 10)]
    assert window_spans(3, 8, 8) == [(0, 1, 3)]
    assert window_spans(1, 8, 8) == []


@pytest.mark.parametrize(("max_length", "stride"), [(64, 64), (8, 3), (6, 6)])
def test_batched_strided_matches_token_by_token(
    model: torch.nn.Module, tokenizer: Any, max_length: int, stride: int
) -> None:
    ll = strided_log_likelihood(
        model, tokenizer, TEXTS, max_length=max_length, stride=stride, batch_size=8
    )
    nll, n = reference(model, tokenizer, TEXTS, max_length, stride)
    assert ll.n_tokens == n
    assert ll.nll_sum == pytest.approx(nll, rel=1e-3)
    if stride < max_length:  # overlapping windows score every text token
        n_text_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS)
        assert ll.n_tokens == n_text_tokens


def test_batch_size_does_not_change_the_result(model: torch.nn.Module, tokenizer: Any) -> None:
    one = strided_log_likelihood(model, tokenizer, TEXTS, max_length=8, stride=4, batch_size=1)
    eight = strided_log_likelihood(model, tokenizer, TEXTS, max_length=8, stride=4, batch_size=8)
    assert (one.n_tokens, one.n_windows) == (eight.n_tokens, eight.n_windows)
    assert one.nll_sum == pytest.approx(eight.nll_sum, rel=1e-5)


def test_derived_quantities(model: torch.nn.Module, tokenizer: Any) -> None:
    ll = strided_log_likelihood(model, tokenizer, TEXTS, max_length=32)
    assert ll.n_bytes == sum(len(t.encode("utf-8")) for t in TEXTS)
    assert ll.bits_per_byte == pytest.approx(ll.nll_sum / math.log(2) / ll.n_bytes)
    assert ll.perplexity == pytest.approx(math.exp(ll.nll_sum / ll.n_tokens))
    assert ll.nll_per_token == pytest.approx(ll.nll_sum / ll.n_tokens)
    # A random model over ~30k tokens is near-uniform: perplexity close to the vocabulary size.
    assert 0.5 * len(tokenizer) < ll.perplexity < 2 * len(tokenizer)


def test_without_bos_or_eos_the_first_token_is_context_only(model: torch.nn.Module) -> None:
    tok = bert_tokenizer()
    assert tok.bos_token_id is None
    assert tok.eos_token_id is None
    ll = strided_log_likelihood(model, tok, ["one two three four"], max_length=16)
    ids = tok("one two three four", add_special_tokens=False)["input_ids"]
    nll, n = naive_nll(model, ids, 16, 16)
    assert ll.n_tokens == n == len(ids) - 1
    assert ll.nll_sum == pytest.approx(nll, rel=1e-3)


def test_probe_reports_details_and_restores_train_mode(
    model: torch.nn.Module, tokenizer: Any
) -> None:
    probe = Perplexity("toy", TEXTS, max_length=16, stride=8, batch_size=2)
    assert (probe.metric, probe.higher_is_better) == ("perplexity", False)
    model.train()
    try:
        result = probe.evaluate(model, tokenizer)
        assert model.training
    finally:
        model.eval()
    assert isinstance(result, ProbeResult)
    ll = strided_log_likelihood(model, tokenizer, TEXTS, max_length=16, stride=8)
    assert result.score == pytest.approx(ll.perplexity)
    for key in ("bits_per_byte", "n_tokens", "n_bytes", "nll_per_token"):
        assert key in result.details
    assert result.details["n_tokens"] == ll.n_tokens


@pytest.mark.parametrize("stride", [0, -1, 17])
def test_bad_stride_is_a_retain_error(model: torch.nn.Module, tokenizer: Any, stride: int) -> None:
    with pytest.raises(RetainError, match="stride"):
        strided_log_likelihood(model, tokenizer, TEXTS, max_length=16, stride=stride)
    with pytest.raises(RetainError, match="stride"):
        Perplexity("toy", TEXTS, max_length=16, stride=stride)


def test_empty_texts_is_a_retain_error(model: torch.nn.Module, tokenizer: Any) -> None:
    with pytest.raises(RetainError, match="empty"):
        strided_log_likelihood(model, tokenizer, [])
    with pytest.raises(RetainError, match="empty"):
        Perplexity("toy", [])


@pytest.mark.slow
def test_real_smollm2_matches_token_by_token() -> None:
    from retain.assets.models import load_model

    loaded = load_model("smollm2-135m", kind="causal-lm")  # converts the GGUF asset if needed
    tok, lm = loaded.tokenizer, loaded.model.eval()
    texts = ["The capital of France is Paris.", "Water boils at one hundred degrees Celsius."]
    ll = strided_log_likelihood(lm, tok, texts, max_length=8, stride=4, batch_size=8)
    nll, n = 0.0, 0
    for text in texts:
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        seq = [prefix, *tok(text, add_special_tokens=False)["input_ids"]]
        one_nll, one_n = naive_nll(lm, seq, 8, 4)
        nll, n = nll + one_nll, n + one_n
    assert ll.n_tokens == n
    assert ll.nll_sum == pytest.approx(nll, rel=1e-3)
    assert 1.0 < ll.perplexity < 1000.0
