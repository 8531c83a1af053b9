"""What a causal LM writes: repetition, length and fluency of greedy continuations.

:class:`GenerationQuality` continues held-out prompts greedily (``max_new_tokens`` at most,
batched with left padding, cut at the end-of-sequence token) and reports

* ``distinct_2``: distinct bigrams / all bigrams over the continuations (higher = more varied);
* ``repeated_4gram_rate``: the share of 4-grams that already occurred earlier in the same
  continuation (degenerate loops push it towards 1);
* ``mean_length``: generated tokens per prompt;
* the score, fluency: the perplexity that the *reference* model assigns to the continuations,
  ``exp(Σ nll / Σ tokens)`` over every continuation token given its prompt (nats per token before
  the exponential; lower = reads as more natural to the reference).

The reference is the first model the probe evaluates (in an audit, the base model): a frozen copy
of it is kept on the CPU, so fine-tuning that makes the model write text its starting point finds
unlikely shows up as a rising reference perplexity. Each continuation's negative log-likelihood
and length are the probe's per-example scores, so an audit gives the change a paired interval.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from retain.errors import RetainError
from retain.evaluation.base import ProbeResult, eval_mode, model_device
from retain.evaluation.perplexity import pad_token_id
from retain.evaluation.zero_shot import candidate_log_likelihoods
from retain.paired_statistics import ExampleScores

__all__ = ["GenerationQuality", "distinct_n", "repeated_ngram_rate"]


def _ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(continuations: Sequence[Sequence[int]], n: int = 2) -> float:
    """Distinct n-grams / all n-grams over ``continuations`` (NaN when there is none).

    >>> distinct_n([[1, 2, 1, 2], [3, 4]])  # bigrams 12 21 12 34: 3 distinct of 4
    0.75
    """
    grams = [g for c in continuations for g in _ngrams(c, n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def repeated_ngram_rate(continuations: Sequence[Sequence[int]], n: int = 4) -> float:
    """The share of n-grams that already occurred earlier in the same continuation (NaN when
    there is none).

    >>> repeated_ngram_rate([[1, 2, 3, 4, 1, 2, 3, 4]])  # 5 4-grams, the last one repeats
    0.2
    """
    repeated = total = 0
    for c in continuations:
        seen: set[tuple[int, ...]] = set()
        for g in _ngrams(c, n):
            repeated += g in seen
            total += 1
            seen.add(g)
    return repeated / total if total else math.nan


class GenerationQuality:
    """Greedy continuations of ``prompts`` and their fluency under a reference model (lower is
    better); see the module docstring for the figures in ``details``."""

    metric: str = "reference_perplexity"
    higher_is_better: bool = False

    def __init__(
        self,
        name: str,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 48,
        max_prompt_tokens: int = 128,
        batch_size: int = 8,
    ) -> None:
        self.name = name
        self.prompts = [p for p in prompts if p.strip()]
        if not self.prompts:
            raise RetainError(f"probe {name!r}: no prompt to continue; pass non-empty prompts")
        if max_new_tokens < 2:
            raise RetainError(f"probe {name!r}: max_new_tokens must be at least 2")
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.batch_size = batch_size
        self.reference: torch.nn.Module | None = None

    def __repr__(self) -> str:
        return f"GenerationQuality({self.name!r}, prompts={len(self.prompts)})"

    def _prompt_ids(self, tokenizer: Any) -> list[list[int]]:
        encoded = tokenizer(self.prompts, add_special_tokens=False)["input_ids"]
        prefix = getattr(tokenizer, "bos_token_id", None)
        head = [int(prefix)] if prefix is not None else []
        return [head + [int(t) for t in ids][-self.max_prompt_tokens :] for ids in encoded]

    def continue_prompts(self, model: torch.nn.Module, tokenizer: Any) -> list[list[int]]:
        """Greedy continuations (token ids, cut at the end-of-sequence token)."""
        return self._continue(model, tokenizer, self._prompt_ids(tokenizer))

    def _continue(
        self, model: torch.nn.Module, tokenizer: Any, prompts: list[list[int]]
    ) -> list[list[int]]:
        pad = pad_token_id(tokenizer)
        eos = getattr(tokenizer, "eos_token_id", None)
        device = model_device(model)
        out: list[list[int]] = []
        with eval_mode(model):
            for start in range(0, len(prompts), self.batch_size):
                chunk = prompts[start : start + self.batch_size]
                width = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, p in enumerate(chunk):  # left padding: every prompt ends at the edge
                    ids[row, width - len(p) :] = torch.tensor(p)
                    mask[row, width - len(p) :] = 1
                generated = model.generate(  # type: ignore[operator]
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    eos_token_id=eos,
                )
                for row in generated[:, width:].tolist():
                    cut = row.index(eos) if eos is not None and eos in row else len(row)
                    out.append([int(t) for t in row[:cut]])
        return out

    def evaluate(self, model: torch.nn.Module, tokenizer: Any) -> ProbeResult:
        """Continue the prompts with ``model``; score the continuations under the reference
        (the first model evaluated, copied then)."""
        if tokenizer is None:
            raise RetainError(f"probe {self.name!r} needs the model's tokenizer")
        if self.reference is None:
            self.reference = copy.deepcopy(model).to("cpu").eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)
        prompts = self._prompt_ids(tokenizer)
        continuations = self._continue(model, tokenizer, prompts)
        nll, lengths = self._reference_nll(prompts, continuations)
        examples = ExampleScores(nll, lengths, "perplexity")
        total = float(lengths.sum())
        return ProbeResult(
            score=float(math.exp(nll.sum() / total)) if total else math.nan,
            details={
                "distinct_2": distinct_n(continuations, 2),
                "repeated_4gram_rate": repeated_ngram_rate(continuations, 4),
                "mean_length": float(lengths.mean()),
                "n": len(continuations),
                "max_new_tokens": self.max_new_tokens,
            },
            examples=examples,
        )

    def _reference_nll(
        self, prompts: list[list[int]], continuations: list[list[int]]
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self.reference is not None
        nll = np.zeros(len(continuations))
        lengths = np.array([float(len(c)) for c in continuations])
        scored = [k for k, c in enumerate(continuations) if c]
        if scored:
            room = self.max_prompt_tokens + self.max_new_tokens + 1
            values = candidate_log_likelihoods(
                self.reference,
                [prompts[k] for k in scored],
                [[continuations[k]] for k in scored],
                max_length=room,
                batch_size=self.batch_size,
            )
            nll[scored] = -values[:, 0]
        return nll, lengths
