"""Pseudo-perplexity of a masked LM (Salazar et al., 2020, "Masked Language Model Scoring").

A masked LM has no left-to-right likelihood; instead each non-special token is masked in turn and
scored given all the others:

    PPPL = exp(-(1/N) Σ_i log p(w_i | w_\\i))

over all ``N`` non-special tokens of all texts. The masked copies (one per token) of one or
several sentences are batched into one forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from retain.errors import RetainError
from retain.evaluation.base import ProbeResult, eval_mode, model_device
from retain.evaluation.perplexity import pad_token_id, right_pad
from retain.paired_statistics import ExampleScores

__all__ = ["PseudoPerplexity", "masked_token_log_probs"]


def masked_token_log_probs(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    batch_size: int = 32,
) -> list[list[float]]:
    """``log p(w_i | w_\\i)`` (nats) of every non-special token ``w_i`` of each text, in order.

    Each text is tokenised with special tokens (``[CLS] ... [SEP]``) and truncated to
    ``max_length``; one copy per non-special position is made with that position replaced by the
    mask token. Copies are right-padded and run ``batch_size`` at a time (a batch can hold copies
    of several texts). A 5-token text ``[CLS] a b c [SEP]`` yields 3 copies:
    ``[CLS] [MASK] b c [SEP]``, ``[CLS] a [MASK] c [SEP]``, ``[CLS] a b [MASK] [SEP]``.

    Raises:
        RetainError: if the tokenizer has no mask token or ``texts`` is empty.
    """
    texts = list(texts)
    if not texts:
        raise RetainError("texts is empty; pass at least one text to score")
    mask_id = getattr(tokenizer, "mask_token_id", None)
    if mask_id is None:
        raise RetainError(
            f"tokenizer {type(tokenizer).__name__} has no mask token; pseudo-perplexity needs a "
            "masked LM (e.g. BERT) and its tokenizer; use Perplexity for causal LMs"
        )
    if batch_size < 1:
        raise RetainError(f"batch_size={batch_size} must be >= 1")
    encoded = tokenizer(
        texts, truncation=True, max_length=max_length, return_special_tokens_mask=True
    )
    # One job per (text, position): the masked copy and the original token to score.
    jobs: list[tuple[int, int, list[int]]] = []
    for text_index, (ids, special) in enumerate(
        zip(encoded["input_ids"], encoded["special_tokens_mask"], strict=True)
    ):
        for position, is_special in enumerate(special):
            if not is_special:
                jobs.append((text_index, position, [int(i) for i in ids]))

    scores: list[list[float]] = [[] for _ in texts]
    device = model_device(model)
    pad_id = pad_token_id(tokenizer)
    with eval_mode(model):
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            input_ids, attention_mask = right_pad([ids for _, _, ids in chunk], pad_id, device)
            rows = torch.arange(len(chunk), device=device)
            positions = torch.tensor([p for _, p, _ in chunk], device=device)
            originals = input_ids[rows, positions].clone()
            input_ids[rows, positions] = int(mask_id)
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            log_probs = torch.log_softmax(logits[rows, positions].float(), dim=-1)
            picked = log_probs[rows, originals].double().tolist()
            for (text_index, _, _), value in zip(chunk, picked, strict=True):
                scores[text_index].append(float(value))
    return scores


class PseudoPerplexity:
    """Pseudo-perplexity of a masked LM on held-out texts (lower is better).

    ``score = exp(-(1/N) Σ_i log p(w_i | w_\\i))`` over the ``N`` non-special tokens of all texts
    (see :func:`masked_token_log_probs`). A model that gives every held-out token probability 1/4
    scores exactly 4. ``details``: ``n_tokens``, ``n_texts``, ``nll_per_token`` (nats),
    ``max_length``. Costs one forward pass per token, batched ``batch_size`` at a time.
    """

    metric: str = "pseudo_perplexity"
    higher_is_better: bool = False

    def __init__(
        self, name: str, texts: Sequence[str], max_length: int = 128, batch_size: int = 32
    ) -> None:
        self.name = name
        self.texts = list(texts)
        if not self.texts:
            raise RetainError(f"probe {name!r}: texts is empty; pass at least one text")
        self.max_length = max_length
        self.batch_size = batch_size

    def evaluate(self, model: torch.nn.Module, tokenizer: Any) -> ProbeResult:
        """Score ``model`` (an ``AutoModelForMaskedLM``) on the probe's texts."""
        per_text = masked_token_log_probs(
            model, tokenizer, self.texts, max_length=self.max_length, batch_size=self.batch_size
        )
        n_tokens = sum(len(s) for s in per_text)
        if n_tokens == 0:
            raise RetainError(f"probe {self.name!r}: texts have no non-special token to score")
        nll_per_token = -math.fsum(v for s in per_text for v in s) / n_tokens
        texts = [s for s in per_text if len(s)]
        examples = ExampleScores(
            np.array([-math.fsum(s) for s in texts]),
            np.array([float(len(s)) for s in texts]),
            "perplexity",
        )
        return ProbeResult(
            score=math.exp(nll_per_token),
            examples=examples,
            details={
                "n_tokens": n_tokens,
                "n_texts": len(self.texts),
                "nll_per_token": nll_per_token,
                "max_length": self.max_length,
            },
        )
