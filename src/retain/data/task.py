"""A task is a list of examples and an objective; strategies and both training hosts share it.

An *example* is a dict of unbatched tensors (``{"input_ids": [T], "labels": []}``); a *batch* is
the same dict with a leading sample dimension, built by the task's ``collate``. The objective maps
``(model, batch)`` to logits and integer targets, so every consumer (the plain loop, Fisher
estimation, A-GEM's memory gradient) computes the same loss:

    loss(batch) = mean over non-ignored positions of  -log softmax(logits)[target]

and, per sample n (used by per-sample Fisher),

    loss_n = mean over the non-ignored positions of sample n.

For a causal LM the targets are the inputs shifted by one (Hugging Face's convention), so the batch
loss equals ``model(**batch).loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional

from retain.errors import RetainError

__all__ = [
    "IGNORE_INDEX",
    "Batch",
    "CausalLM",
    "Classification",
    "Example",
    "Objective",
    "PadCollate",
    "Task",
    "pad_collate",
    "per_sample_loss",
    "stack_collate",
    "summed_loss",
    "target_count",
]

IGNORE_INDEX = -100
Example = dict[str, Tensor]
Batch = dict[str, Tensor]


class Objective(Protocol):
    """Maps a model and a batch to ``(logits [N, ..., C], targets [N, ...])``; -100 is ignored."""

    def logits_and_targets(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """Logits and integer targets with the sample dimension first."""
        ...


def model_logits(model: nn.Module, inputs: Batch) -> Tensor:
    """``model(**inputs)`` and its ``.logits`` (a plain module may return the tensor itself)."""
    out = model(**inputs)
    logits = out if isinstance(out, Tensor) else getattr(out, "logits", None)
    if not isinstance(logits, Tensor):
        raise RetainError(
            f"{type(model).__name__} returned {type(out).__name__} without logits; "
            "give the task an objective whose forward returns a logits tensor"
        )
    return logits


@dataclass(frozen=True)
class Classification:
    """One label per sample: logits ``[N, C]``, targets ``batch[label_key]``.

    Logits come from ``model(**inputs)`` (its ``.logits``, or the tensor a plain module returns).

    ``forward`` overrides how logits are computed (for example to pick a task's head).
    """

    label_key: str = "labels"
    forward: Callable[[nn.Module, Batch], Tensor] | None = None

    def logits_and_targets(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """Logits ``[N, C]`` and labels ``[N]``."""
        if self.label_key not in batch:
            raise RetainError(
                f"batch has no {self.label_key!r} column (it has {sorted(batch)}); "
                "add the labels or set Classification(label_key=...)"
            )
        inputs = {k: v for k, v in batch.items() if k != self.label_key}
        logits = self.forward(model, inputs) if self.forward else model_logits(model, inputs)
        labels = batch[self.label_key]
        classes = logits.shape[-1]
        bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= classes))
        if bool(bad.any()):
            raise RetainError(
                f"label {int(labels[bad][0])} is outside the head's {classes} classes "
                f"(0..{classes - 1}); load the model with num_labels= the number of classes"
            )
        return logits, labels


@dataclass(frozen=True)
class CausalLM:
    """Next-token prediction: logits ``[N, T-1, V]`` for positions 0..T-2, targets 1..T-1.

    Targets come from ``labels`` when present (-100 masks prompt or padding), else from
    ``input_ids`` with positions where ``attention_mask`` is 0 ignored.
    """

    def logits_and_targets(self, model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
        """Shifted logits and targets, as Hugging Face computes a causal-LM loss."""
        if "input_ids" not in batch:
            raise RetainError(f"causal-LM batch has no 'input_ids' (it has {sorted(batch)})")
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model_logits(model, inputs)
        if logits.dim() != 3:
            raise RetainError(
                f"{type(model).__name__} gives logits of shape {tuple(logits.shape)}, not "
                "[batch, tokens, vocabulary]: the CausalLM objective needs a causal LM "
                "(use Classification() for a classifier)"
            )
        targets = batch.get("labels")
        if targets is None:
            targets = batch["input_ids"].clone()
            if "attention_mask" in batch:
                targets[batch["attention_mask"] == 0] = IGNORE_INDEX
        return logits[:, :-1], targets[:, 1:]


def target_count(objective: Objective, batch: Batch) -> int:
    """Number of target positions of ``batch`` (the denominator of its mean loss), without a model.

    Classification: labels that are not ``-100``. Causal LM: predicted tokens, positions ``1..T-1``
    that are not ignored (from ``labels``, else ``input_ids`` masked by ``attention_mask``). Any
    other objective: one per sample.
    """
    if isinstance(objective, Classification):
        labels = batch.get(objective.label_key)
        if labels is None:
            raise RetainError(
                f"batch has no {objective.label_key!r} column (it has {sorted(batch)}); "
                "add the labels or set Classification(label_key=...)"
            )
        return int((labels != IGNORE_INDEX).sum())
    if isinstance(objective, CausalLM):
        targets = batch.get("labels")
        if targets is None:
            if "input_ids" not in batch:
                raise RetainError(f"causal-LM batch has no 'input_ids' (it has {sorted(batch)})")
            mask = batch.get("attention_mask")
            if mask is None:
                return int(batch["input_ids"][:, 1:].numel())
            return int((mask[:, 1:] != 0).sum())
        return int((targets[:, 1:] != IGNORE_INDEX).sum())
    return len(next(iter(batch.values())))


def per_sample_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy per sample ``[N]``: the mean over that sample's non-ignored positions.

    A sample with no target position gets loss 0 (it carries no information).
    """
    n = logits.shape[0]
    flat = functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).reshape(n, -1)
    valid = (targets.reshape(n, -1) != IGNORE_INDEX).to(flat.dtype)
    return flat.sum(dim=1) / valid.sum(dim=1).clamp_min(1.0)


def summed_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy summed over every non-ignored position, in nats (float32).

    ``summed_loss / target_count`` is :func:`batch_loss`; the engine divides by the count of a
    whole global batch, evaluation by the count of a whole task.
    """
    return functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def batch_loss(objective: Objective, model: nn.Module, batch: Batch) -> Tensor:
    """Mean cross-entropy over every non-ignored position of the batch (Hugging Face's loss)."""
    logits, targets = objective.logits_and_targets(model, batch)
    return functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def stack_collate(examples: Sequence[Example]) -> Batch:
    """Stack same-shaped examples into a batch (lists and numbers become tensors)."""
    if not examples:
        raise RetainError("cannot collate an empty list of examples")
    batch: Batch = {}
    for key in examples[0]:
        values = [_as_tensor(ex, key) for ex in examples]
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise RetainError(
                f"examples have different shapes for {key!r} ({sorted(shapes)[:2]}, ...); "
                "give the task collate=pad_collate(tokenizer.pad_token_id)"
            )
        batch[key] = torch.stack(values)
    return batch


def _as_tensor(example: Example, key: str) -> Tensor:
    if key not in example:
        raise RetainError(
            f"an example lacks {key!r} while others have it; give every example the same keys"
        )
    value = example[key]
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise RetainError(
            f"example value {key!r} is a {type(value).__name__} that is not a tensor; "
            "store numbers, lists or tensors"
        ) from exc


def pad_collate(pad_token_id: int) -> Callable[[Sequence[Example]], Batch]:
    """Right-pad token sequences to the longest in the batch: ``input_ids`` with
    ``pad_token_id``, ``labels`` with -100, every other per-token key (``attention_mask``,
    ``token_type_ids``, ...) with 0. Keys with one value per example (a class label) are stacked;
    lists become tensors; a missing ``attention_mask`` is built from the lengths. Two collates of
    the same pad id are equal (tasks that can share a batch compare equal)."""
    return PadCollate(pad_token_id)


@dataclass(frozen=True)
class PadCollate:
    """The collate :func:`pad_collate` returns (a value, so equal pad ids compare equal)."""

    pad_token_id: int

    def __call__(self, examples: Sequence[Example]) -> Batch:
        if not examples:
            raise RetainError("cannot collate an empty list of examples")
        if "input_ids" not in examples[0]:
            raise RetainError("pad_collate needs 'input_ids' in every example")
        rows = [{k: _as_tensor(ex, k) for k in examples[0]} for ex in examples]
        lengths = [int(r["input_ids"].shape[0]) for r in rows]
        width = max(lengths)
        batch: Batch = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            per_token = values[0].dim() == 1 and all(
                v.dim() == 1 and v.shape[0] == n for v, n in zip(values, lengths, strict=True)
            )
            if per_token:
                fill = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX}.get(key, 0)
                batch[key] = torch.stack(
                    [functional.pad(v, (0, width - v.shape[0]), value=fill) for v in values]
                )
            else:
                batch[key] = stack_collate([{key: v} for v in values])[key]
        if "attention_mask" not in batch:
            batch["attention_mask"] = torch.stack(
                [(torch.arange(width) < n).long() for n in lengths]
            )
        return batch


@dataclass(frozen=True)
class Task:
    """A named training set with its objective and collate function.

    ``examples`` is any sized, indexable collection of examples (a list, a torch ``Dataset``).
    ``texts`` optionally holds the raw text of each example, used to check that replay sources
    never overlap evaluation text.
    """

    name: str
    examples: Sequence[Example]
    objective: Objective = field(default_factory=Classification)
    collate: Callable[[Sequence[Example]], Batch] = stack_collate
    texts: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if len(self.examples) == 0:
            raise RetainError(f"task {self.name!r} has no training examples; check its dataset")

    def __repr__(self) -> str:
        """Name, size and objective (not every example's tensors)."""
        return f"Task({self.name!r}, {len(self.examples)} examples, {self.objective!r})"

    def with_examples(self, examples: Sequence[Example]) -> Task:
        """The same task over other examples (replay mixes use this)."""
        return replace(self, examples=examples, texts=None)

    def batch_count(self, batch_size: int, limit: int | None = None) -> int:
        """How many batches :meth:`batches` makes: ``⌈n / batch_size⌉`` over the first ``n =
        min(limit, len(examples))`` examples."""
        return -(-self._limit(limit) // batch_size)

    def batch(self, index: int, batch_size: int, limit: int | None = None) -> Batch:
        """Batch ``index`` of :meth:`batches`, collated alone (data-parallel evaluation collates
        only its own share)."""
        n = self._limit(limit)
        start = index * batch_size
        if not 0 <= start < n:
            raise IndexError(f"batch {index} of {self.batch_count(batch_size, limit)}")
        return self.collate([self.examples[i] for i in range(start, min(start + batch_size, n))])

    def batches(self, batch_size: int, limit: int | None = None) -> list[Batch]:
        """Consecutive batches over the first ``limit`` examples (all when None), in order."""
        count = self.batch_count(batch_size, limit)
        return [self.batch(k, batch_size, limit) for k in range(count)]

    def _limit(self, limit: int | None) -> int:
        return len(self.examples) if limit is None else min(limit, len(self.examples))
