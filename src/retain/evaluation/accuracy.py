"""Classification accuracy of a sequence-classification head on labelled texts.

The prediction is ``argmax model(**batch).logits``; the probe also reports per-class accuracy and
macro F1 (scikit-learn), which expose a head that collapses onto one class while keeping a decent
overall accuracy on imbalanced data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score

from retain.errors import RetainError
from retain.evaluation.base import ProbeResult, eval_mode, model_device
from retain.evaluation.perplexity import pad_token_id, right_pad
from retain.paired_statistics import ExampleScores

__all__ = ["ClassificationAccuracy", "check_labels", "per_class_accuracy"]


def check_labels(
    name: str,
    texts: Sequence[str],
    labels: Sequence[int],
    label_names: Sequence[str] | None = None,
) -> list[int]:
    """Validate a probe's texts and integer labels and return the labels as a list of ``int``.

    Raises:
        RetainError: on empty or length-mismatched inputs, a negative label, or a label outside
            ``label_names``.
    """
    if not texts:
        raise RetainError(f"probe {name!r}: texts is empty; pass at least one labelled text")
    if len(texts) != len(labels):
        raise RetainError(
            f"probe {name!r}: {len(texts)} texts but {len(labels)} labels; pass one label per text"
        )
    out = [int(y) for y in labels]
    if min(out) < 0:
        raise RetainError(f"probe {name!r}: label {min(out)} is negative; use labels 0..C-1")
    if label_names is not None and max(out) >= len(label_names):
        raise RetainError(
            f"probe {name!r}: label {max(out)} has no name in label_names "
            f"({len(label_names)} names); pass one name per class"
        )
    return out


def per_class_accuracy(
    labels: Sequence[int], predictions: Sequence[int], label_names: Sequence[str] | None = None
) -> dict[str, float]:
    """Accuracy within each true class present in ``labels`` (the class's recall).

    Keys are the label index as a string (``"0"``, ``"1"``...; strings so the dict survives a JSON
    round trip unchanged), or the class name when ``label_names`` is given. Example: labels
    ``[0, 0, 1]`` and predictions ``[0, 1, 1]`` give ``{"0": 0.5, "1": 1.0}``.
    """
    y = np.asarray(labels)
    p = np.asarray(predictions)
    out: dict[str, float] = {}
    for c in sorted(set(y.tolist())):
        key = label_names[c] if label_names is not None else str(c)
        out[key] = float((p[y == c] == c).mean())
    return out


class ClassificationAccuracy:
    """Accuracy of a sequence-classification model (``AutoModelForSequenceClassification``).

    ``score = mean(argmax logits == label)``. ``details``: ``n``, ``per_class_accuracy`` (see
    :func:`per_class_accuracy`) and ``macro_f1`` (unweighted mean of per-class F1 over the classes
    that occur in labels or predictions). Texts are tokenised with special tokens, truncated to
    ``max_length`` and right-padded with an attention mask.

    Example::

        probe = ClassificationAccuracy("sst2", texts, labels, label_names=["neg", "pos"])
        probe.evaluate(model, tokenizer).score  # e.g. 0.91

    Raises:
        RetainError: at construction on bad labels; at evaluation when the model's head has a
            different number of labels than ``label_names`` or too few for the largest label.
    """

    metric: str = "accuracy"
    higher_is_better: bool = True

    def __init__(
        self,
        name: str,
        texts: Sequence[str],
        labels: Sequence[int],
        max_length: int = 128,
        batch_size: int = 32,
        label_names: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.texts = list(texts)
        self.labels = check_labels(name, self.texts, labels, label_names)
        self.label_names = list(label_names) if label_names is not None else None
        self.max_length = max_length
        self.batch_size = batch_size

    def _check_head(self, n_head: int) -> None:
        if self.label_names is not None and n_head != len(self.label_names):
            raise RetainError(
                f"probe {self.name!r}: the model's head has {n_head} labels but label_names has "
                f"{len(self.label_names)}; load the model with num_labels={len(self.label_names)}"
            )
        if max(self.labels) >= n_head:
            raise RetainError(
                f"probe {self.name!r}: label {max(self.labels)} does not fit the model's head of "
                f"{n_head} labels; load the model with num_labels={max(self.labels) + 1}"
            )

    def predict(self, model: torch.nn.Module, tokenizer: Any) -> list[int]:
        """Argmax class of each probe text (in probe order)."""
        config: Any = getattr(model, "config", None)
        n_head = getattr(config, "num_labels", None)
        if n_head is not None:
            self._check_head(int(n_head))
        encoded = tokenizer(self.texts, truncation=True, max_length=self.max_length)["input_ids"]
        device = model_device(model)
        # Decoder heads find each row's last token through config.pad_token_id: pad with that id.
        config_pad = getattr(config, "pad_token_id", None)
        pad_id = int(config_pad) if config_pad is not None else pad_token_id(tokenizer)
        predictions: list[int] = []
        with eval_mode(model):
            for start in range(0, len(encoded), self.batch_size):
                chunk = encoded[start : start + self.batch_size]
                input_ids, attention_mask = right_pad(chunk, pad_id, device)
                logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
                self._check_head(int(logits.shape[-1]))
                predictions.extend(int(p) for p in logits.argmax(dim=-1).tolist())
        return predictions

    def evaluate(self, model: torch.nn.Module, tokenizer: Any) -> ProbeResult:
        """Score ``model`` on the probe's labelled texts."""
        predictions = self.predict(model, tokenizer)
        y = np.asarray(self.labels)
        p = np.asarray(predictions)
        return ProbeResult(
            score=float((y == p).mean()),
            examples=ExampleScores((y == p).astype(float)),
            details={
                "n": len(self.labels),
                "per_class_accuracy": per_class_accuracy(y.tolist(), p.tolist(), self.label_names),
                "macro_f1": float(f1_score(y, p, average="macro", zero_division=0)),
            },
        )
