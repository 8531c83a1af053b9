"""The generation probe: greedy continuations, repetition figures, and fluency under the
reference model checked against a direct forward pass."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from retain.errors import RetainError
from retain.evaluation.generation import GenerationQuality, distinct_n, repeated_ngram_rate
from retain.paired_statistics import paired_change

PROMPTS = ["The weather today is", "In the city of", "She opened the door and", "Prices rose"]


def _lm(folder: Path) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def test_repetition_figures_by_hand() -> None:
    assert distinct_n([[1, 1, 1, 1]]) == pytest.approx(1 / 3)
    assert repeated_ngram_rate([[1, 2, 3, 4, 5]]) == 0.0
    assert repeated_ngram_rate([[7] * 8]) == pytest.approx(4 / 5)
    assert math.isnan(distinct_n([[1]]))


def test_fluency_is_the_reference_models_perplexity_of_the_continuation(
    tiny_lm_dirs: tuple[Path, Path],
) -> None:
    base, tuned = tiny_lm_dirs
    model, tokenizer = _lm(base)
    probe = GenerationQuality("gen", PROMPTS, max_new_tokens=6, batch_size=3)
    first = probe.evaluate(model, tokenizer)
    assert probe.reference is not None
    continuations = probe.continue_prompts(model, tokenizer)
    assert all(0 < len(c) <= 6 for c in continuations)
    # By hand: the reference (here the same model) scores prompt + continuation in one pass.
    nll = tokens = 0.0
    for prompt, cont in zip(probe._prompt_ids(tokenizer), continuations, strict=True):
        ids = torch.tensor([prompt + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        for j, token in enumerate(cont):
            nll -= float(logp[len(prompt) - 1 + j, token])
        tokens += len(cont)
    assert first.score == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert first.details["mean_length"] == pytest.approx(tokens / len(PROMPTS))
    assert 0 <= first.details["distinct_2"] <= 1
    # A different (perturbed) model writes other text, scored by the same reference.
    other, _ = _lm(tuned)
    second = probe.evaluate(other, tokenizer)
    assert second.score != first.score
    assert first.examples is not None
    assert second.examples is not None
    same = paired_change(first.examples, first.examples, higher_is_better=False)
    assert (same.low, same.high) == (0.0, 0.0)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(RetainError, match="no prompt"):
        GenerationQuality("g", ["  "])
    with pytest.raises(RetainError, match="max_new_tokens"):
        GenerationQuality("g", ["x"], max_new_tokens=1)
