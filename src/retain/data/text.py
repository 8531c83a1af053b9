"""Tasks from raw text: classification (one label per text) and causal-LM (next-token) training.

Both builders tokenise once, with truncation and no padding, and store examples as dicts of
unbatched ``long`` tensors; the task's ``collate`` is :func:`~retain.data.task.pad_collate`, which
right-pads each batch to its longest example. ``texts`` is kept on the task, so replay's overlap
check (:func:`retain.strategies.replay.check_no_overlap`) can compare it with evaluation text.

* :func:`text_classification_task` returns a :class:`TextClassificationTask`: a
  :class:`~retain.data.task.Task` that also records ``num_labels`` and, for string labels, the
  ``label_names`` (label id ``i`` is ``label_names[i]``, the names in sorted order).
* :func:`causal_lm_task` packs texts into fixed blocks (``pack=True``) or keeps one truncated
  example per text (``pack=False``); its ``labels`` are the input ids, right-padded with -100, so
  padding never counts in the loss: ``batch_loss`` equals the model's own ``model(**batch).loss``.

Padding id (:func:`pad_id`): the tokenizer's ``pad_token_id``; a tokenizer without one (GPT-2 and
Llama style) pads with its ``eos_token_id`` instead, logged once per tokenizer. Padded positions are
masked (attention mask 0, label -100), so the choice does not change the loss. The user's tokenizer
is never modified.
"""

from __future__ import annotations

import logging
import numbers
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from retain.data.task import CausalLM, Classification, Example, Task, pad_collate
from retain.errors import RetainError

__all__ = ["TextClassificationTask", "causal_lm_task", "pad_id", "text_classification_task"]

logger = logging.getLogger(__name__)
_LOGGED: weakref.WeakSet[Any] = weakref.WeakSet()  # tokenizers whose eos-as-pad was logged
_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TextClassificationTask(Task):
    """A classification :class:`~retain.data.task.Task` built from text, with its label space.

    Attributes:
        num_labels: classes of the head this task needs (``num_labels`` given to the builder, else
            the number of label names, else ``max(label) + 1``).
        label_names: for string labels, the names in sorted order: id ``i`` is ``label_names[i]``;
            ``None`` when the labels were integer ids already.
    """

    num_labels: int = 0
    label_names: tuple[str, ...] | None = None

    @property
    def label_to_id(self) -> dict[str, int]:
        """``{name: id}`` for string labels (empty for integer labels)."""
        return {name: i for i, name in enumerate(self.label_names or ())}


def pad_id(tokenizer: Any) -> int:
    """The id to pad with: ``pad_token_id``, else ``eos_token_id`` (logged once per tokenizer).

    Padding is masked out of attention and loss, so using eos changes no result. Raises
    :class:`RetainError` when the tokenizer has neither.
    """
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None:
        return int(pad)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise RetainError(
            f"tokenizer {type(tokenizer).__name__} has neither a pad nor an eos token; set one "
            "before building the task, e.g. tokenizer.pad_token = tokenizer.unk_token"
        )
    try:
        first = tokenizer not in _LOGGED
        _LOGGED.add(tokenizer)
    except TypeError:  # not weak-referenceable or not hashable: log every time
        first = True
    if first:
        logger.info(
            "tokenizer %s has no pad token; padding with its eos token (id %d), which is masked "
            "out of attention and loss",
            type(tokenizer).__name__,
            int(eos),
        )
    return int(eos)


def _check_texts(texts: Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise RetainError(f"{what}: texts is one string; pass a list of texts")
    items = list(texts)
    if not items:
        raise RetainError(f"{what}: texts is empty; pass at least one text")
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise RetainError(
                f"{what}: text {i} is a {type(text).__name__}, not a str; convert every text "
                "to a string (e.g. [str(t) for t in texts])"
            )
    return items


def _check_size(value: int, minimum: int, what: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise RetainError(f"{what}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _label_ids(
    labels: Sequence[int | str], num_labels: int | None, what: str
) -> tuple[list[int], tuple[str, ...] | None, int]:
    """Integer ids, the sorted names (string labels) and the class count."""
    items = list(labels)
    strings = [y for y in items if isinstance(y, str)]
    if len(strings) == len(items):
        names = tuple(sorted(set(strings)))
        if num_labels is not None and len(names) > num_labels:
            raise RetainError(
                f"{what}: {len(names)} distinct label names ({', '.join(names[:4])}...) do not "
                f"fit num_labels={num_labels}; raise num_labels or drop num_labels="
            )
        index = {name: i for i, name in enumerate(names)}
        return [index[str(y)] for y in items], names, num_labels or len(names)
    ids: list[int] = []
    for i, y in enumerate(items):
        if not isinstance(y, numbers.Integral):
            raise RetainError(
                f"{what}: label {i} is {y!r} ({type(y).__name__}); labels must be all ints "
                "(class ids) or all strings (class names)"
            )
        ids.append(int(y))
    count = num_labels if num_labels is not None else max(ids) + 1
    bad = [(i, y) for i, y in enumerate(ids) if not 0 <= y < count]
    if bad:
        i, y = bad[0]
        raise RetainError(
            f"{what}: label {y} (example {i}) is outside [0, {count}); use class ids 0.."
            f"{count - 1}, or raise num_labels"
        )
    return ids, None, count


def text_classification_task(
    name: str,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int | str],
    *,
    max_length: int = 128,
    num_labels: int | None = None,
) -> TextClassificationTask:
    """A classification task: each text tokenised (truncated to ``max_length`` tokens) with a label.

    Examples hold ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer gives
    them) and ``labels`` (a 0-dim long tensor); the objective is
    :class:`~retain.data.task.Classification`, the collate ``pad_collate(pad_id(tokenizer))``.

    Labels are either class ids in ``[0, num_labels)`` or class names; names map to ids in sorted
    order, recorded in the result's ``label_names`` (``label_to_id`` gives the mapping). Without
    ``num_labels`` the class count is the number of names, or ``max(label) + 1``.
    """
    what = f"task {name!r}"
    items = _check_texts(texts, what)
    if isinstance(labels, str):
        label_list: list[Any] = [labels]
    else:  # numpy arrays and tensors give plain Python ints through tolist()
        label_list = list(labels.tolist() if hasattr(labels, "tolist") else labels)
    if len(label_list) != len(items):
        raise RetainError(
            f"{what}: {len(items)} texts but {len(label_list)} labels; give one label per text"
        )
    max_length = _check_size(max_length, 1, what, "max_length")
    if num_labels is not None:
        num_labels = _check_size(num_labels, 1, what, "num_labels")
    ids, names, count = _label_ids(label_list, num_labels, what)
    padding = pad_id(tokenizer)
    encoded = tokenizer(items, truncation=True, max_length=max_length)
    keys = [k for k in _TOKEN_KEYS if k in encoded]
    examples: list[Example] = []
    for i, label in enumerate(ids):
        example = {k: torch.tensor(encoded[k][i], dtype=torch.long) for k in keys}
        if example["input_ids"].numel() == 0:
            raise RetainError(f"{what}: text {i} ({items[i][:40]!r}) gives no tokens; drop it")
        example["labels"] = torch.tensor(label, dtype=torch.long)
        examples.append(example)
    return TextClassificationTask(
        name=name,
        examples=examples,
        objective=Classification(),
        collate=pad_collate(padding),
        texts=items,
        num_labels=count,
        label_names=names,
    )


def _with_eos(ids: list[int], eos: int | None) -> list[int]:
    """``ids`` followed by eos, unless the tokenizer already ended it with eos (or has none)."""
    if eos is None or (ids and ids[-1] == eos):
        return ids
    return [*ids, eos]


def causal_lm_task(
    name: str,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    block_size: int = 128,
    pack: bool = True,
) -> Task:
    """A next-token-prediction task (domain adaptation, instruction text) for a causal LM.

    Each text is tokenised with the tokenizer's special tokens and followed by its eos token (when
    it has one and did not add it). ``pack=True`` concatenates all of them and cuts the stream into
    ``len(stream) // block_size`` blocks of exactly ``block_size`` tokens (the last partial block
    is dropped; text giving no full block is refused). ``pack=False`` keeps one example per text,
    cut to its first ``block_size`` tokens (a cut text loses its eos) and right-padded in collate.

    Examples hold ``input_ids``, ``attention_mask`` and ``labels`` (a copy of the ids, padded with
    -100), so with the :class:`~retain.data.task.CausalLM` objective the loss is the mean
    next-token cross-entropy over real tokens only: ``model(**batch).loss`` and ``batch_loss``
    agree. ``texts`` keeps the input texts (not the blocks).
    """
    what = f"task {name!r}"
    items = _check_texts(texts, what)
    block_size = _check_size(block_size, 2, what, "block_size")
    padding = pad_id(tokenizer)
    eos_id = getattr(tokenizer, "eos_token_id", None)
    eos = int(eos_id) if eos_id is not None else None
    encoded = tokenizer(items, verbose=False)["input_ids"]
    sequences = [_with_eos(list(ids), eos) for ids in encoded]
    rows: list[list[int]]
    if pack:
        stream = [t for ids in sequences for t in ids]
        if len(stream) < block_size:
            raise RetainError(
                f"{what}: the texts give {len(stream)} tokens, less than one block of "
                f"block_size={block_size}; lower block_size, add text, or pass pack=False"
            )
        rows = [
            stream[start : start + block_size]
            for start in range(0, len(stream) - block_size + 1, block_size)
        ]
    else:
        rows = [ids[:block_size] for ids in sequences]
        for i, row in enumerate(rows):
            if len(row) < 2:
                raise RetainError(
                    f"{what}: text {i} ({items[i][:40]!r}) gives {len(row)} token(s); a causal-LM "
                    "example needs at least 2 (drop it or pack=True)"
                )
    examples: list[Example] = []
    for row in rows:
        ids = torch.tensor(row, dtype=torch.long)
        examples.append(
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
        )
    return Task(name, examples, CausalLM(), pad_collate(padding), texts=items)
