"""Few-shot in-context classification: balanced seeded demonstrations, the prompt they build,
and its bad inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from retain.errors import RetainError
from retain.evaluation.few_shot import FewShotClassification, demonstrations

TRAIN = ["good film", "great fun", "loved it", "dull mess", "awful plot", "boring"]
LABELS = [1, 1, 1, 0, 0, 0]


def test_demonstrations_are_class_balanced_seeded_and_shuffled() -> None:
    picks = demonstrations(LABELS, k=4, classes=2, seed=3)
    assert sorted(LABELS[i] for i in picks) == [0, 0, 1, 1]
    assert demonstrations(LABELS, k=4, classes=2, seed=3) == picks
    odd = demonstrations(LABELS, k=3, classes=2, seed=0)
    assert sorted(LABELS[i] for i in odd) == [0, 0, 1]  # the remainder goes to the first class
    with pytest.raises(RetainError, match="needs 4 examples of class 0"):
        demonstrations(LABELS, k=8, classes=2)


def test_every_prompt_starts_with_the_same_demonstrations() -> None:
    probe = FewShotClassification(
        "fs",
        TRAIN,
        LABELS,
        ["a {braced} text"],
        [1],
        [" bad", " good"],
        k=2,
        template="Review: {text}\nSentiment:",
        seed=1,
    )
    shown = probe.template.format(text="QUERY")
    blocks = shown.split("\n\n")
    assert len(blocks) == 3
    for block, index in zip(blocks[:2], probe.chosen, strict=True):
        word = [" bad", " good"][LABELS[index]]
        assert block == f"Review: {TRAIN[index]}\nSentiment:{word}"
    assert blocks[2] == "Review: QUERY\nSentiment:"


def test_it_scores_a_real_tiny_model(tiny_lm_dirs: tuple[Path, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, _ = tiny_lm_dirs
    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    probe = FewShotClassification(
        "fs", TRAIN, LABELS, TRAIN, LABELS, [" bad", " good"], k=2, template="{text} ->"
    )
    result = probe.evaluate(model, tokenizer)
    assert 0.0 <= result.score <= 1.0
    assert result.details["k"] == 2
    assert result.examples is not None
    assert result.examples.score == pytest.approx(result.score)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize(
    ("k", "message"), [(0, "at least 1"), (7, "larger than the train split \\(6 examples\\)")]
)
def test_a_bad_k_is_refused(k: int, message: str) -> None:
    with pytest.raises(RetainError, match=message):
        FewShotClassification("fs", TRAIN, LABELS, ["x"], [0], [" bad", " good"], k=k)
