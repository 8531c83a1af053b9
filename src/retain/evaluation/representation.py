"""Representation probes: how much task information the frozen model's features still hold.

:func:`pooled_embeddings` turns texts into one vector each (mean, first-token or last-token pooling
of one hidden layer). :class:`KNNProbe` and :class:`LinearProbe` fit a k-nearest-neighbour or a
logistic-regression classifier on the embeddings of a probe train split and report accuracy on a
probe test split. The model is never updated: a drop in these scores after fine-tuning means the
features themselves lost the information, not just a head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from retain.errors import RetainError
from retain.evaluation.accuracy import check_labels
from retain.evaluation.base import ProbeResult, embedding_cache, eval_mode, model_device
from retain.evaluation.perplexity import pad_token_id, right_pad
from retain.paired_statistics import ExampleScores

__all__ = ["KNNProbe", "LinearProbe", "Pooling", "pooled_embeddings"]

Pooling = Literal["mean", "cls", "last"]
Distance = Literal["cosine", "euclidean"]
_POOLINGS: tuple[str, ...] = ("mean", "cls", "last")


def feature_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose hidden states a probe reads: the shared encoder of a
    :class:`~retain.data.task_heads.TaskHeads` model (also inside a PEFT wrapper, adapters
    included), else ``model`` itself."""
    from retain.data.task_heads import find_task_heads

    heads = find_task_heads(model)
    return model if heads is None else heads.encoder


def pooled_embeddings(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    pooling: Pooling = "mean",
    layer: int = -1,
    max_length: int = 128,
    batch_size: int = 32,
) -> np.ndarray:
    """One float32 vector per text from hidden layer ``layer``, shape ``(len(texts), hidden)``.

    Works with any model that accepts ``output_hidden_states=True`` (an encoder ``AutoModel``, a
    sequence-classification model, a causal LM). ``hidden_states[0]`` is the embedding layer and
    ``hidden_states[-1]`` the last block. Texts are tokenised with special tokens, truncated to
    ``max_length``, sorted by length and right-padded with an attention mask. Pooling:

    - ``"mean"``: average over non-padding positions only, ``Σ_t m_t h_t / Σ_t m_t``;
    - ``"cls"``: position 0 (``[CLS]`` for BERT; ``<bos>`` or the first word for a decoder);
    - ``"last"``: the last non-padding position (the usual choice for a causal LM).

    Raises:
        RetainError: on an unknown ``pooling``, an out-of-range ``layer`` or empty ``texts``.
    """
    if pooling not in _POOLINGS:
        raise RetainError(f"pooling={pooling!r} is not one of {', '.join(_POOLINGS)}")
    if not texts:
        raise RetainError("texts is empty; pass at least one text to embed")
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    device = model_device(model)
    pad_id = pad_token_id(tokenizer)
    pooled: list[np.ndarray] = []
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            chunk = [encoded[i] for i in order[start : start + batch_size]]
            input_ids, attention_mask = right_pad(chunk, pad_id, device)
            hidden_states = model(
                input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
            ).hidden_states
            if not -len(hidden_states) <= layer < len(hidden_states):
                raise RetainError(
                    f"layer={layer} is out of range: the model has {len(hidden_states)} hidden "
                    f"states (0 = embeddings); use -{len(hidden_states)}..{len(hidden_states) - 1}"
                )
            h = hidden_states[layer].float()
            if pooling == "mean":
                m = attention_mask.unsqueeze(-1).float()
                vectors = (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
            elif pooling == "cls":
                vectors = h[:, 0]
            else:
                last = attention_mask.sum(dim=1) - 1
                vectors = h[torch.arange(h.shape[0], device=device), last]
            pooled.append(vectors.cpu().numpy())
    stacked = np.concatenate(pooled, axis=0)
    out = np.empty_like(stacked)
    out[np.asarray(order)] = stacked
    return out


class _FrozenFeatureProbe:
    """Shared plumbing: validate two labelled splits, embed both with the frozen model."""

    higher_is_better: bool = True

    def __init__(
        self,
        name: str,
        train_texts: Sequence[str],
        train_labels: Sequence[int],
        test_texts: Sequence[str],
        test_labels: Sequence[int],
        pooling: Pooling,
        layer: int,
        max_length: int,
        batch_size: int,
    ) -> None:
        self.name = name
        self.train_texts = list(train_texts)
        self.test_texts = list(test_texts)
        self.train_labels = check_labels(f"{name} (train)", self.train_texts, train_labels)
        self.test_labels = check_labels(f"{name} (test)", self.test_texts, test_labels)
        if len(set(self.train_labels)) < 2:
            raise RetainError(
                f"probe {name!r}: the train split has a single class; pass at least two classes"
            )
        if pooling not in _POOLINGS:
            raise RetainError(f"pooling={pooling!r} is not one of {', '.join(_POOLINGS)}")
        self.pooling: Pooling = pooling
        self.layer = layer
        self.max_length = max_length
        self.batch_size = batch_size

    def _embed(self, model: torch.nn.Module, tokenizer: Any, texts: list[str]) -> np.ndarray:
        model = feature_model(model)
        # A kNN and a linear probe of one suite evaluation embed the same texts with the same
        # model: they share the vectors through the evaluation's cache (the weights cannot
        # change inside it; outside an evaluation nothing is cached).
        cache = embedding_cache()
        key = (
            id(model),
            id(tokenizer),
            tuple(texts),
            self.pooling,
            self.layer,
            self.max_length,
        )
        if cache is not None and key in cache:
            cached: np.ndarray = cache[key]
            return cached
        vectors = pooled_embeddings(
            model,
            tokenizer,
            texts,
            pooling=self.pooling,
            layer=self.layer,
            max_length=self.max_length,
            batch_size=self.batch_size,
        )
        if cache is not None:
            cache[key] = vectors
        return vectors

    def _result(self, predictions: np.ndarray, extra: dict[str, Any]) -> ProbeResult:
        y = np.asarray(self.test_labels)
        details: dict[str, Any] = {
            "n_train": len(self.train_labels),
            "n_test": len(self.test_labels),
            "pooling": self.pooling,
            "layer": self.layer,
            "macro_f1": float(f1_score(y, predictions, average="macro", zero_division=0)),
        }
        details.update(extra)
        correct = (predictions == y).astype(float)
        return ProbeResult(
            score=float(correct.mean()), details=details, examples=ExampleScores(correct)
        )


class KNNProbe(_FrozenFeatureProbe):
    """k-nearest-neighbour accuracy on frozen pooled embeddings (higher is better).

    Each test text is classified by majority vote of its ``k`` nearest train texts
    (``distance="cosine"`` or ``"euclidean"``; ``k`` is capped at the train size). No parameter is
    fitted, so the score depends only on the geometry of the features. Deterministic.
    ``details``: ``n_train``, ``n_test``, ``k``, ``distance``, ``pooling``, ``layer``, ``macro_f1``.
    """

    metric: str = "knn_accuracy"

    def __init__(
        self,
        name: str,
        train_texts: Sequence[str],
        train_labels: Sequence[int],
        test_texts: Sequence[str],
        test_labels: Sequence[int],
        k: int = 10,
        distance: Distance = "cosine",
        pooling: Pooling = "mean",
        layer: int = -1,
        max_length: int = 128,
        batch_size: int = 32,
    ) -> None:
        super().__init__(
            name,
            train_texts,
            train_labels,
            test_texts,
            test_labels,
            pooling,
            layer,
            max_length,
            batch_size,
        )
        if k < 1:
            raise RetainError(f"probe {name!r}: k={k} must be >= 1")
        if distance not in ("cosine", "euclidean"):
            raise RetainError(f"probe {name!r}: distance={distance!r}; use cosine or euclidean")
        self.k = k
        self.distance: Distance = distance

    def evaluate(self, model: torch.nn.Module, tokenizer: Any) -> ProbeResult:
        """Embed both splits with the frozen model, vote with the ``k`` nearest train texts."""
        k = min(self.k, len(self.train_labels))
        knn = KNeighborsClassifier(n_neighbors=k, metric=self.distance)
        knn.fit(self._embed(model, tokenizer, self.train_texts), self.train_labels)
        predictions = knn.predict(self._embed(model, tokenizer, self.test_texts))
        return self._result(predictions, {"k": k, "distance": self.distance})


class LinearProbe(_FrozenFeatureProbe):
    """Logistic-regression accuracy on frozen, standardised pooled embeddings (higher is better).

    Features are standardised with statistics of the train split, then
    ``LogisticRegression(C=C, max_iter=1000, random_state=seed)`` is fitted on the train split and
    scored on the test split. Same ``seed`` and model, same score. ``details``: ``n_train``,
    ``n_test``, ``C``, ``pooling``, ``layer``, ``macro_f1``.
    """

    metric: str = "linear_probe_accuracy"

    def __init__(
        self,
        name: str,
        train_texts: Sequence[str],
        train_labels: Sequence[int],
        test_texts: Sequence[str],
        test_labels: Sequence[int],
        C: float = 1.0,  # noqa: N803 - scikit-learn's name for the inverse regularisation
        pooling: Pooling = "mean",
        layer: int = -1,
        max_length: int = 128,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__(
            name,
            train_texts,
            train_labels,
            test_texts,
            test_labels,
            pooling,
            layer,
            max_length,
            batch_size,
        )
        if C <= 0:
            raise RetainError(f"probe {name!r}: C={C} must be > 0 (inverse regularisation)")
        self.C = C
        self.seed = seed

    def evaluate(self, model: torch.nn.Module, tokenizer: Any) -> ProbeResult:
        """Embed both splits with the frozen model, fit the classifier on train, score on test."""
        classifier = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=self.C, max_iter=1000, random_state=self.seed),
        )
        classifier.fit(self._embed(model, tokenizer, self.train_texts), self.train_labels)
        predictions = classifier.predict(self._embed(model, tokenizer, self.test_texts))
        return self._result(predictions, {"C": self.C})
