"""Strided (sliding-window) perplexity of a causal language model.

Each text is tokenised on its own, without special tokens, and one context token is put in front
(``bos_token_id``, else ``eos_token_id``) so that the text's first token is scored too. Texts longer
than ``max_length`` are cut into overlapping windows the way the Hugging Face perplexity guide does
(https://huggingface.co/docs/transformers/perplexity): every token is scored once, with as much left
context as the window allows. Windows of all texts are batched together, right-padded.

The result is a :class:`LogLikelihood` (a sum of negative log-likelihoods in nats plus the counts
needed to normalise it), from which token perplexity and bits per byte are derived.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias

from retain.errors import RetainError
from retain.evaluation.base import ProbeResult, eval_mode, model_device
from retain.paired_statistics import ExampleScores

__all__ = [
    "LogLikelihood",
    "Perplexity",
    "pad_token_id",
    "right_pad",
    "strided_log_likelihood",
    "window_spans",
]


@dataclass(frozen=True)
class LogLikelihood:
    """Summed negative log-likelihood of some texts and the counts to normalise it.

    Attributes:
        nll_sum: ``-Σ log p(token | context)`` over all scored tokens, in nats (summed in float64).
        n_tokens: number of scored tokens.
        n_bytes: UTF-8 bytes of the texts (tokenizer-independent normaliser).
        n_windows: number of model inputs (windows) that were run.
        text_nll: per text, its summed negative log-likelihood (nats), in input order.
        text_tokens: per text, its scored tokens.
    """

    nll_sum: float
    n_tokens: int
    n_bytes: int
    n_windows: int
    text_nll: tuple[float, ...] = ()
    text_tokens: tuple[int, ...] = ()

    def examples(self) -> ExampleScores:
        """The per-text contributions, for paired intervals
        (:mod:`retain.paired_statistics`): perplexity ``exp(Σ nll / Σ tokens)``."""
        return ExampleScores(
            np.asarray(self.text_nll), np.asarray(self.text_tokens, dtype=float), "perplexity"
        )

    @property
    def nll_per_token(self) -> float:
        """Mean negative log-likelihood per scored token, in nats: ``nll_sum / n_tokens``."""
        return self.nll_sum / self.n_tokens if self.n_tokens else math.nan

    @property
    def perplexity(self) -> float:
        """Token-level perplexity ``exp(nll_sum / n_tokens)``.

        Example: 3 tokens with probabilities 1/2, 1/4, 1/8 give ``nll_sum = 6 ln 2`` and
        perplexity ``exp(2 ln 2) = 4``. Depends on the tokenizer; compare models that share one.
        """
        return math.exp(self.nll_per_token)

    @property
    def bits_per_byte(self) -> float:
        """``nll_sum / ln 2 / n_bytes``: bits per UTF-8 byte, comparable across tokenizers.

        Example: ``nll_sum = 6 ln 2`` nats over a 12-byte text is 6 bits / 12 bytes = 0.5.
        """
        return self.nll_sum / math.log(2) / self.n_bytes if self.n_bytes else math.nan


def window_spans(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """The ``(begin, target_start, end)`` windows that score a sequence of ``n`` tokens.

    A window feeds ``seq[begin:end]`` and scores targets ``t`` in ``[target_start, end)``, each with
    context ``seq[begin:t]``. ``target_start = max(previous end, begin + 1)``, so no token is scored
    twice and position 0 (the prepended context token) never is. Windows that would score nothing
    are dropped. Worked example, ``n=10, max_length=4, stride=2`` (``c`` = context only,
    ``T`` = scored)::

        position   0 1 2 3 4 5 6 7 8 9
        window 1   c T T T                 (0, 1, 4)
        window 2       c c T T             (2, 4, 6)
        window 3           c c T T         (4, 6, 8)
        window 4               c c T T     (6, 8, 10)

    Every token after the first gets at least ``max_length - stride`` tokens of context (2 here).
    With ``stride == max_length`` (the default of :func:`strided_log_likelihood`) windows do not
    overlap and the first token of each later window has no context, so it is not scored:
    ``n=10, max_length=4, stride=4`` gives ``(0, 1, 4), (4, 5, 8), (8, 9, 10)``, 7 of 9 targets.
    Use ``stride < max_length`` (e.g. ``max_length // 2``) to score every token.

    Raises:
        RetainError: if ``stride`` is not in ``[1, max_length]``.
    """
    _check_stride(max_length, stride)
    spans: list[tuple[int, int, int]] = []
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        target_start = max(prev_end, begin + 1)
        if target_start < end:
            spans.append((begin, target_start, end))
        prev_end = end
        if end == n:
            break
    return spans


def _check_stride(max_length: int, stride: int) -> None:
    if max_length < 2:
        raise RetainError(f"max_length={max_length} is too small; use at least 2 tokens per window")
    if not 1 <= stride <= max_length:
        raise RetainError(
            f"stride={stride} must be in [1, max_length={max_length}]; "
            "use e.g. stride=max_length // 2 for overlapping windows"
        )


def right_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``(input_ids, attention_mask)`` long tensors on ``device``.

    Right padding keeps each sequence's positions 0..len-1 unchanged, so models that derive position
    ids from the sequence index need no ``position_ids``.
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad with: pad, else eos, else 0 (padded positions are masked out anyway)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def strided_log_likelihood(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 512,
    stride: int | None = None,
    batch_size: int = 8,
) -> LogLikelihood:
    """Sum the causal LM's negative log-likelihood of ``texts`` over strided windows.

    Each text becomes ``[context token] + tokenizer(text, add_special_tokens=False)`` where the
    context token is ``bos_token_id``, else ``eos_token_id``; with neither, the text's first token
    is only context and is not scored. The sequence is cut into windows by :func:`window_spans`
    (``stride`` defaults to ``max_length``); windows of all texts are sorted by length, batched
    ``batch_size`` at a time and right-padded with an attention mask. Only the scored positions
    of each row enter the loss (the equivalent of label -100 on context and padding positions),
    one row at a time so that no batch-sized copy of the ``(batch, length, vocab)`` logits is
    made. Per-token losses are computed in float32 and summed in float64. Runs under
    ``torch.no_grad()`` in eval mode and restores the model's mode.

    Raises:
        RetainError: on an empty ``texts``, a bad ``stride``/``batch_size``, or texts with no token
            to score.
    """
    texts = list(texts)
    if not texts:
        raise RetainError("texts is empty; pass at least one text to score")
    stride = max_length if stride is None else stride
    _check_stride(max_length, stride)
    if batch_size < 1:
        raise RetainError(f"batch_size={batch_size} must be >= 1")

    prefix = getattr(tokenizer, "bos_token_id", None)
    if prefix is None:
        prefix = getattr(tokenizer, "eos_token_id", None)
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    # (token ids, number of leading context positions, index of the text)
    windows: list[tuple[list[int], int, int]] = []
    for k, ids in enumerate(encoded):
        seq = ([int(prefix)] if prefix is not None else []) + [int(i) for i in ids]
        for begin, target_start, end in window_spans(len(seq), max_length, stride):
            windows.append((seq[begin:end], target_start - begin, k))
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if not windows:
        raise RetainError(
            "texts have no token to score; pass non-empty texts or a tokenizer with a bos/eos token"
        )
    windows.sort(key=lambda w: len(w[0]), reverse=True)

    device = model_device(model)
    pad_id = pad_token_id(tokenizer)
    text_nll = torch.zeros(len(texts), dtype=torch.float64, device=device)
    text_tokens = [0] * len(texts)
    with eval_mode(model):
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            input_ids, attention_mask = right_pad([w for w, _, _ in chunk], pad_id, device)
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            for row, (window, n_context, k) in enumerate(chunk):
                # Position j predicts token j+1: targets n_context..len-1 are read at j-1.
                token_nll = F.cross_entropy(
                    logits[row, n_context - 1 : len(window) - 1].float(),
                    input_ids[row, n_context : len(window)],
                    reduction="none",
                )
                text_nll[k] += token_nll.double().sum()
                text_tokens[k] += len(window) - n_context
    per_text = text_nll.tolist()
    return LogLikelihood(
        nll_sum=float(text_nll.sum()),
        n_tokens=sum(text_tokens),
        n_bytes=n_bytes,
        n_windows=len(windows),
        text_nll=tuple(per_text),
        text_tokens=tuple(text_tokens),
    )


class Perplexity:
    """Token perplexity of a causal LM on held-out texts (lower is better).

    ``score`` is ``exp(nll_sum / n_tokens)`` from :func:`strided_log_likelihood`; ``details`` carry
    ``bits_per_byte``, ``nll_per_token`` (nats), ``n_tokens``, ``n_bytes``, ``n_windows``,
    ``n_texts``, ``max_length`` and ``stride``.

    Example::

        probe = Perplexity("wiki", texts, max_length=512, stride=256)
        probe.evaluate(model, tokenizer).score  # e.g. 21.3
    """

    metric: str = "perplexity"
    higher_is_better: bool = False

    def __init__(
        self,
        name: str,
        texts: Sequence[str],
        max_length: int = 512,
        stride: int | None = None,
        batch_size: int = 8,
    ) -> None:
        self.name = name
        self.texts = list(texts)
        if not self.texts:
            raise RetainError(f"probe {name!r}: texts is empty; pass at least one text")
        self.max_length = max_length
        self.stride = max_length if stride is None else stride
        _check_stride(max_length, self.stride)
        self.batch_size = batch_size

    def evaluate(self, model: torch.nn.Module, tokenizer: Any) -> ProbeResult:
        """Score ``model`` on the probe's texts; see the class docstring for the details."""
        ll = strided_log_likelihood(
            model,
            tokenizer,
            self.texts,
            max_length=self.max_length,
            stride=self.stride,
            batch_size=self.batch_size,
        )
        return ProbeResult(
            score=ll.perplexity,
            examples=ll.examples(),
            details={
                "bits_per_byte": ll.bits_per_byte,
                "nll_per_token": ll.nll_per_token,
                "n_tokens": ll.n_tokens,
                "n_bytes": ll.n_bytes,
                "n_windows": ll.n_windows,
                "n_texts": len(self.texts),
                "max_length": self.max_length,
                "stride": self.stride,
            },
        )
