"""Few-shot in-context classification of a causal LM: ``k`` labelled demonstrations, then the
query, scored by label-word log-likelihood.

The demonstrations are drawn once, seeded and class-balanced, from a train split (``k // C``
per class for ``C`` classes, the remainder from the first classes, then shuffled); each is the
template filled with its text followed by its label word and a blank line. Every test text gets
the same demonstrations in front of its own filled template, and the label word with the highest
log-likelihood is the prediction (:class:`~retain.evaluation.zero_shot.ZeroShotClassification`
does the scoring, and its optional contextual calibration sees the same demonstrations). What it
measures after fine-tuning: whether the model still learns a task from a few examples in its
context, a capability fine-tuning on one format often breaks before perplexity moves.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from retain.errors import RetainError
from retain.evaluation.base import ProbeResult
from retain.evaluation.zero_shot import ZeroShotClassification

__all__ = ["FewShotClassification", "demonstrations"]


def demonstrations(labels: Sequence[int], k: int, classes: int, seed: int = 0) -> list[int]:
    """Indices of ``k`` class-balanced training examples, seeded (see the module docstring).

    >>> sorted(demonstrations([0, 0, 0, 1, 1, 1], k=4, classes=2, seed=0))  # two of each
    [1, 2, 3, 4]
    """
    rng = random.Random(seed)
    by_class = [[i for i, y in enumerate(labels) if y == c] for c in range(classes)]
    wanted = [k // classes + (1 if c < k % classes else 0) for c in range(classes)]
    short = [c for c in range(classes) if len(by_class[c]) < wanted[c]]
    if short:
        c = short[0]
        raise RetainError(
            f"few-shot k={k} needs {wanted[c]} examples of class {c}, but the train split has "
            f"{len(by_class[c])}; lower k or give more training examples"
        )
    chosen = [i for c in range(classes) for i in rng.sample(by_class[c], wanted[c])]
    rng.shuffle(chosen)
    return chosen


class FewShotClassification(ZeroShotClassification):
    """Accuracy of in-context classification with ``k`` demonstrations (higher is better).

    ``details`` add ``k`` and the demonstrations' training indices to those of
    :class:`~retain.evaluation.zero_shot.ZeroShotClassification`.
    """

    def __init__(
        self,
        name: str,
        train_texts: Sequence[str],
        train_labels: Sequence[int],
        texts: Sequence[str],
        labels: Sequence[int],
        label_words: Sequence[str],
        *,
        k: int = 4,
        template: str = "{text}",
        seed: int = 0,
        batch_size: int = 8,
        max_length: int = 768,
        label_names: Sequence[str] | None = None,
        calibrate: bool = False,
    ) -> None:
        if k < 1:
            raise RetainError(f"probe {name!r}: few-shot k must be at least 1, got {k}")
        if k > len(train_texts):
            raise RetainError(
                f"probe {name!r}: few-shot k={k} is larger than the train split "
                f"({len(train_texts)} examples); lower k"
            )
        super().__init__(
            name,
            texts,
            labels,
            label_words,
            template=template,
            batch_size=batch_size,
            max_length=max_length,
            label_names=label_names,
            calibrate=calibrate,
        )
        train_y = list(train_labels)
        if len(train_y) != len(train_texts):
            raise RetainError(
                f"probe {name!r}: {len(train_texts)} train texts, {len(train_y)} labels"
            )
        self.k = k
        self.chosen = demonstrations(train_y, k, len(self.label_words), seed)
        shown = "".join(
            template.format(text=train_texts[i]) + self.label_words[train_y[i]] + "\n\n"
            for i in self.chosen
        )
        self.template = shown.replace("{", "{{").replace("}", "}}") + template

    def evaluate(self, model: torch.nn.Module, tokenizer: Any) -> ProbeResult:
        """Score ``model`` with the demonstrations in front of every test text."""
        result = super().evaluate(model, tokenizer)
        result.details.update(k=self.k, demonstrations=list(self.chosen))
        return result
