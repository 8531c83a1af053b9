"""Zero-shot classification with a causal LM: which label word does the model find most likely?

Each text becomes a prompt ``template.format(text=...)``; every candidate label word (e.g.
``" positive"``, ``" negative"``, multi-token words allowed) is scored by the summed
log-probability of its tokens given the prompt, and the prediction is the argmax. This measures
general knowledge that fine-tuning on an unrelated task can erase, with no trained head.

Tokenisation (the lm-eval-harness convention): trailing whitespace of the prompt is moved to the
front of each word (``"Sentiment: " + "pos"`` is scored as ``"Sentiment:" + " pos"``, so the space
is part of the word's first token as in running text). The prompt is tokenised without special
tokens and, like :mod:`retain.evaluation.perplexity`, gets ``bos_token_id`` (else ``eos_token_id``)
in front. A word's tokens are ``tokenize(prompt + word)[len(prompt_ids):]`` when that tokenisation
starts with ``prompt_ids``; if a merge across the boundary breaks that prefix, the word is
tokenised on its own instead, so the prompt tokens are always exactly ``prompt_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from retain.errors import RetainError
from retain.evaluation.accuracy import check_labels, per_class_accuracy
from retain.evaluation.base import ProbeResult, eval_mode, model_device
from retain.evaluation.perplexity import right_pad
from retain.paired_statistics import ExampleScores

__all__ = [
    "CONTENT_FREE",
    "ZeroShotClassification",
    "candidate_log_likelihoods",
    "encode_candidates",
]

#: Inputs with no content, for contextual calibration (Zhao et al. 2021).
CONTENT_FREE = ("N/A", "", "[MASK]")


def _normalise(scores: np.ndarray) -> np.ndarray:
    """Log-probabilities renormalised over the candidates of each row (a log-softmax)."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    return np.asarray(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))


def encode_candidates(
    tokenizer: Any, prompt: str, words: Sequence[str]
) -> tuple[list[int], list[list[int]]]:
    """``(prompt_ids, [word_ids, ...])`` for one prompt, following the module's convention.

    Raises:
        RetainError: if a word has no token, or the prompt has none and the tokenizer has neither
            a bos nor an eos token to condition on.
    """
    stripped = prompt.rstrip()
    moved = prompt[len(stripped) :]
    prefix = getattr(tokenizer, "bos_token_id", None)
    if prefix is None:
        prefix = getattr(tokenizer, "eos_token_id", None)
    head = [int(prefix)] if prefix is not None else []
    body = [int(i) for i in tokenizer(stripped, add_special_tokens=False)["input_ids"]]
    prompt_ids = head + body
    if not prompt_ids:
        raise RetainError(
            f"prompt {prompt!r} has no token and the tokenizer has no bos/eos token; "
            "use a template with some fixed text around {text}"
        )
    candidates: list[list[int]] = []
    for word in words:
        whole = [
            int(i)
            for i in tokenizer(stripped + moved + word, add_special_tokens=False)["input_ids"]
        ]
        if whole[: len(body)] == body:
            ids = whole[len(body) :]
        else:
            ids = [int(i) for i in tokenizer(moved + word, add_special_tokens=False)["input_ids"]]
        if not ids:
            raise RetainError(f"label word {word!r} has no token; use a non-empty label word")
        candidates.append(ids)
    return prompt_ids, candidates


def candidate_log_likelihoods(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    candidate_ids: Sequence[Sequence[Sequence[int]]],
    *,
    max_length: int = 256,
    batch_size: int = 16,
    fast_path: bool = True,
) -> np.ndarray:
    """``log p(candidate | prompt)`` (nats, summed over the candidate's tokens), shape ``(P, C)``.

    Prompts longer than ``max_length - L`` tokens, with ``L`` the longest candidate of that prompt,
    lose their leftmost tokens, so every candidate of a prompt sees the same context. When every
    candidate is a single token and ``fast_path`` is on, one forward per prompt reads the
    next-token distribution at the last prompt position; otherwise each ``prompt + candidate[:-1]``
    is run (batched, sorted by length, right-padded) and candidate token ``j`` is read at position
    ``len(prompt) - 1 + j``. Example: prompt ``[5, 9]`` and candidate ``[3, 4]`` run ``[5, 9, 3]``
    and add ``log p(3)`` at position 1 to ``log p(4)`` at position 2.

    Raises:
        RetainError: if a candidate is at least ``max_length`` tokens long, or prompts have
            different numbers of candidates.
    """
    if len({len(cands) for cands in candidate_ids}) > 1:
        raise RetainError("every prompt needs the same number of candidates (one per label word)")
    contexts: list[list[int]] = []
    for prompt, cands in zip(prompt_ids, candidate_ids, strict=True):
        room = max_length - max(len(c) for c in cands)
        if room < 1:
            raise RetainError(
                f"a label word has {max(len(c) for c in cands)} tokens, too many for "
                f"max_length={max_length}; raise max_length or shorten the label words"
            )
        contexts.append(list(prompt)[-room:])
    scores = np.zeros((len(contexts), max(len(c) for c in candidate_ids)))
    single = all(len(c) == 1 for cands in candidate_ids for c in cands)
    device = model_device(model)

    # A job is one sequence to run: (prompt index, candidate indices, tokens, positions, targets).
    jobs: list[tuple[int, list[int], list[int], list[int], list[int]]] = []
    for p, (context, cands) in enumerate(zip(contexts, candidate_ids, strict=True)):
        if fast_path and single:
            last = len(context) - 1
            targets = [c[0] for c in cands]
            jobs.append((p, list(range(len(cands))), context, [last] * len(cands), targets))
            continue
        for c, cand in enumerate(cands):
            positions = [len(context) - 1 + j for j in range(len(cand))]
            jobs.append((p, [c] * len(cand), context + list(cand[:-1]), positions, list(cand)))
    jobs.sort(key=lambda job: len(job[2]), reverse=True)

    with eval_mode(model):
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            input_ids, attention_mask = right_pad([job[2] for job in chunk], 0, device)
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            row_index = [r for r, job in enumerate(chunk) for _ in job[3]]
            rows = torch.tensor(row_index, device=device)
            at = torch.tensor([q for job in chunk for q in job[3]], device=device)
            wanted = torch.tensor([t for job in chunk for t in job[4]], device=device)
            log_probs = torch.log_softmax(logits[rows, at].float(), dim=-1)
            picked = log_probs.gather(1, wanted[:, None])[:, 0].double().cpu().numpy()
            k = 0
            for p, cand_indices, *_ in chunk:
                for c in cand_indices:
                    scores[p, c] += picked[k]
                    k += 1
    return scores


class ZeroShotClassification:
    """Zero-shot accuracy of a causal LM choosing among label words (higher is better).

    ``score`` is the fraction of texts whose true label word has the highest summed
    log-likelihood (see :func:`candidate_log_likelihoods`). ``details``: ``n``,
    ``per_class_accuracy``, ``mean_margin`` (mean over texts of ``log p(true word) - max over the
    other words of log p(word)``, in nats; positive means right on average), ``chance``
    (``1 / len(label_words)``) and ``fast_path`` (whether one forward per prompt sufficed).

    Example::

        probe = ZeroShotClassification(
            "sst2-zs", texts, labels, [" negative", " positive"],
            template="Review: {text}\\nSentiment:",
        )
        probe.evaluate(model, tokenizer).score  # chance is 0.5

    With ``calibrate=True`` the label scores of each text are renormalised over the label words
    and the mean of the same for content-free inputs (:data:`CONTENT_FREE`) is subtracted before
    the argmax (contextual calibration, Zhao et al. 2021). Small models often prefer one label
    word whatever the text; on SmolLM2-135M and movie snippets calibration lifts accuracy from
    about chance to about 0.78.
    """

    metric: str = "accuracy"
    higher_is_better: bool = True

    def __init__(
        self,
        name: str,
        texts: Sequence[str],
        labels: Sequence[int],
        label_words: Sequence[str],
        template: str = "{text}",
        batch_size: int = 16,
        max_length: int = 256,
        label_names: Sequence[str] | None = None,
        calibrate: bool = False,
    ) -> None:
        self.name = name
        self.calibrate = calibrate
        self.texts = list(texts)
        self.label_words = list(label_words)
        if len(self.label_words) < 2:
            raise RetainError(f"probe {name!r}: pass at least two label_words to choose among")
        if label_names is not None and len(label_names) != len(self.label_words):
            raise RetainError(
                f"probe {name!r}: {len(label_names)} label_names for {len(self.label_words)} "
                "label_words; pass one name per label word"
            )
        self.labels = check_labels(name, self.texts, labels, label_names or self.label_words)
        try:
            template.format(text="")
        except (KeyError, IndexError, ValueError) as err:
            raise RetainError(
                f"probe {name!r}: template {template!r} must have only the {{text}} field "
                f"(escape other braces as {{{{ }}}}): {err}"
            ) from None
        if "{text}" not in template:
            raise RetainError(f"probe {name!r}: template {template!r} has no {{text}} field")
        self.template = template
        self.batch_size = batch_size
        self.max_length = max_length
        self.label_names = list(label_names) if label_names is not None else None

    def encode(self, tokenizer: Any) -> tuple[list[list[int]], list[list[list[int]]]]:
        """Prompt ids and label-word ids of every text (see :func:`encode_candidates`)."""
        encoded = [
            encode_candidates(tokenizer, self.template.format(text=t), self.label_words)
            for t in self.texts
        ]
        return [prompt for prompt, _ in encoded], [cands for _, cands in encoded]

    def log_likelihoods(self, model: torch.nn.Module, tokenizer: Any) -> np.ndarray:
        """``(len(texts), len(label_words))`` summed log-probabilities of each label word."""
        prompts, candidates = self.encode(tokenizer)
        return candidate_log_likelihoods(
            model, prompts, candidates, max_length=self.max_length, batch_size=self.batch_size
        )

    def content_free_bias(self, model: torch.nn.Module, tokenizer: Any) -> np.ndarray:
        """Mean label log-probabilities (normalised over the labels) for content-free inputs.

        Contextual calibration (Zhao et al. 2021, "Calibrate Before Use"): the template filled
        with ``"N/A"``, ``""`` and ``"[MASK]"`` shows the model's prior over the label words;
        subtracting it removes the bias a small model has towards one label word.
        """
        encoded = [
            encode_candidates(tokenizer, self.template.format(text=t), self.label_words)
            for t in CONTENT_FREE
        ]
        raw = candidate_log_likelihoods(
            model,
            [e[0] for e in encoded],
            [e[1] for e in encoded],
            max_length=self.max_length,
            batch_size=self.batch_size,
        )
        return np.asarray(_normalise(raw).mean(axis=0))

    def evaluate(self, model: torch.nn.Module, tokenizer: Any) -> ProbeResult:
        """Score ``model`` on the probe's texts (calibrated when ``calibrate`` is on)."""
        prompts, candidates = self.encode(tokenizer)
        scores = candidate_log_likelihoods(
            model, prompts, candidates, max_length=self.max_length, batch_size=self.batch_size
        )
        if self.calibrate:
            scores = _normalise(scores) - self.content_free_bias(model, tokenizer)
        y = np.asarray(self.labels)
        predictions = scores.argmax(axis=1)
        rows = np.arange(len(y))
        others = scores.copy()
        others[rows, y] = -np.inf
        margins = scores[rows, y] - others.max(axis=1)
        single = all(len(c) == 1 for cands in candidates for c in cands)
        return ProbeResult(
            score=float((predictions == y).mean()),
            examples=ExampleScores((predictions == y).astype(float)),
            details={
                "n": len(y),
                "per_class_accuracy": per_class_accuracy(
                    y.tolist(), predictions.tolist(), self.label_names
                ),
                "mean_margin": float(margins.mean()),
                "chance": 1.0 / len(self.label_words),
                "fast_path": single,
                "calibrated": self.calibrate,
            },
        )
