"""Zero-shot label scoring: fast path equals general path equals a naive per-candidate loop."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from retain.errors import RetainError
from retain.evaluation.zero_shot import (
    CONTENT_FREE,
    ZeroShotClassification,
    candidate_log_likelihoods,
    encode_candidates,
)
from tiny_models import bert_tokenizer, tiny_llama_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "I loved this film.",
    "Terrible, a waste of two hours and of a perfectly good evening.",
    "It was fine.",
    "Great acting, weak plot, and a soundtrack that nobody will remember next week.",
    "Boring.",
]
LABELS = [1, 0, 1, 1, 0]
TEMPLATE = "Review: {text} Sentiment: "
SINGLE = ["bad", "good"]  # one WordPiece each
MULTI = ["dreadful", "unbelievably wonderful", "okayish"]  # several WordPieces


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return bert_tokenizer(bos=True)


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = tiny_llama_config(len(tokenizer))
    return LlamaForCausalLM(config).eval()


def naive_scores(
    model: torch.nn.Module, prompts: list[list[int]], candidates: list[list[list[int]]]
) -> np.ndarray:
    """Run every prompt + candidate alone, unpadded, and sum the candidate's log-probs."""
    out = np.zeros((len(prompts), len(candidates[0])))
    with torch.no_grad():
        for p, (prompt, cands) in enumerate(zip(prompts, candidates, strict=True)):
            for c, cand in enumerate(cands):
                # The last len(cand) positions of prompt + cand[:-1] predict the candidate.
                ids = torch.tensor([prompt + cand[:-1]])
                logits = model(input_ids=ids, logits_to_keep=len(cand)).logits[0]
                log_probs = torch.log_softmax(logits.double(), -1)
                out[p, c] = sum(float(log_probs[j, t]) for j, t in enumerate(cand))
    return out


def encode_all(tokenizer: Any, words: list[str]) -> tuple[list[list[int]], list[list[list[int]]]]:
    pairs = [encode_candidates(tokenizer, TEMPLATE.format(text=t), words) for t in TEXTS]
    return [p for p, _ in pairs], [c for _, c in pairs]


def test_single_token_fast_path_equals_general_path(model: torch.nn.Module, tokenizer: Any) -> None:
    prompts, candidates = encode_all(tokenizer, SINGLE)
    assert all(len(c) == 1 for cands in candidates for c in cands)
    fast = candidate_log_likelihoods(model, prompts, candidates, batch_size=2)
    general = candidate_log_likelihoods(model, prompts, candidates, batch_size=3, fast_path=False)
    np.testing.assert_allclose(fast, general, atol=1e-4)
    np.testing.assert_allclose(fast, naive_scores(model, prompts, candidates), atol=1e-4)


def test_multi_token_words_match_the_naive_loop(model: torch.nn.Module, tokenizer: Any) -> None:
    prompts, candidates = encode_all(tokenizer, MULTI)
    assert any(len(c) > 1 for c in candidates[0])
    got = candidate_log_likelihoods(model, prompts, candidates, batch_size=4)
    np.testing.assert_allclose(got, naive_scores(model, prompts, candidates), atol=1e-4)


@pytest.mark.parametrize("words", [SINGLE, MULTI])
def test_predictions_are_the_argmax_of_log_likelihoods(
    model: torch.nn.Module, tokenizer: Any, words: list[str]
) -> None:
    labels = [y % len(words) for y in LABELS]
    probe = ZeroShotClassification("toy", TEXTS, labels, words, template=TEMPLATE, batch_size=4)
    assert (probe.metric, probe.higher_is_better) == ("accuracy", True)
    prompts, candidates = encode_all(tokenizer, words)
    naive = naive_scores(model, prompts, candidates)
    np.testing.assert_allclose(probe.log_likelihoods(model, tokenizer), naive, atol=1e-4)
    model.train()
    result = probe.evaluate(model, tokenizer)
    assert model.training
    model.eval()
    predictions = naive.argmax(axis=1)
    assert result.score == pytest.approx(float(np.mean(predictions == np.asarray(labels))))
    true = naive[np.arange(len(labels)), labels]
    others = naive.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    assert result.details["mean_margin"] == pytest.approx(
        float(np.mean(true - others.max(1))), abs=1e-4
    )
    assert result.details["chance"] == pytest.approx(1 / len(words))
    assert result.details["n"] == len(TEXTS)
    assert result.details["fast_path"] == (words is SINGLE)


def test_long_prompts_are_left_truncated_consistently(
    model: torch.nn.Module, tokenizer: Any
) -> None:
    prompts, candidates = encode_all(tokenizer, SINGLE)
    fast = candidate_log_likelihoods(model, prompts, candidates, max_length=6)
    general = candidate_log_likelihoods(model, prompts, candidates, max_length=6, fast_path=False)
    truncated = [p[-5:] for p in prompts]
    np.testing.assert_allclose(fast, general, atol=1e-4)
    np.testing.assert_allclose(fast, naive_scores(model, truncated, candidates), atol=1e-4)
    with pytest.raises(RetainError, match="max_length"):
        candidate_log_likelihoods(model, prompts, [[[1] * 6, [2]]] * len(prompts), max_length=6)


def test_tokenisation_boundary(tokenizer: Any) -> None:
    body = tokenizer("Sentiment:", add_special_tokens=False)["input_ids"]
    prompt, cands = encode_candidates(tokenizer, "Sentiment: ", ["good"])
    assert prompt == [tokenizer.bos_token_id, *body]  # trailing space moved to the word
    assert (prompt, cands) == encode_candidates(tokenizer, "Sentiment:", [" good"])
    # "cat" + "alog" merges into one WordPiece: the word is then tokenised on its own.
    assert len(tokenizer("The catalog", add_special_tokens=False)["input_ids"]) == 2
    _, (alog,) = encode_candidates(tokenizer, "The cat", ["alog"])
    assert alog == tokenizer("alog", add_special_tokens=False)["input_ids"]


def test_bad_arguments_are_retain_errors() -> None:
    with pytest.raises(RetainError, match="label 2"):
        ZeroShotClassification("toy", TEXTS, [2, 0, 1, 1, 0], SINGLE)
    with pytest.raises(RetainError, match="two label_words"):
        ZeroShotClassification("toy", TEXTS, [0] * 5, ["good"])
    with pytest.raises(RetainError, match="template"):
        ZeroShotClassification("toy", TEXTS, LABELS, SINGLE, template="no field")
    with pytest.raises(RetainError, match="template"):
        ZeroShotClassification("toy", TEXTS, LABELS, SINGLE, template="{text} {label}")
    with pytest.raises(RetainError, match="label_names"):
        ZeroShotClassification("toy", TEXTS, LABELS, SINGLE, label_names=["a"])


def test_calibration_subtracts_the_content_free_prior(
    model: torch.nn.Module, tokenizer: Any
) -> None:
    probe = ZeroShotClassification("zs", TEXTS, LABELS, SINGLE, template=TEMPLATE, calibrate=True)
    raw = naive_scores(model, *probe.encode(tokenizer))
    free = [encode_candidates(tokenizer, TEMPLATE.format(text=t), SINGLE) for t in CONTENT_FREE]
    prior = naive_scores(model, [f[0] for f in free], [f[1] for f in free])

    def normalise(a: np.ndarray) -> np.ndarray:  # log p(word) renormalised over the two words
        return a - np.log(np.exp(a).sum(axis=1, keepdims=True))

    calibrated = normalise(raw) - normalise(prior).mean(axis=0)
    result = probe.evaluate(model, tokenizer)
    expected = float((calibrated.argmax(axis=1) == np.array(LABELS)).mean())
    assert result.score == pytest.approx(expected)
    assert result.details["calibrated"] is True
    y = np.array(LABELS)
    margin = calibrated[np.arange(len(y)), y] - calibrated[np.arange(len(y)), 1 - y]
    assert result.details["mean_margin"] == pytest.approx(float(margin.mean()), abs=1e-5)
