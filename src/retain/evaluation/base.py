"""The probe contract: one capability, one score, its direction explicit.

A probe is any object with ``name``, ``higher_is_better``, ``metric`` and
``evaluate(model, tokenizer) -> ProbeResult``. Probes never train the model, run under
``torch.no_grad()`` and leave the model in the mode (train/eval) they found it in.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from retain.paired_statistics import ExampleScores

__all__ = [
    "Probe",
    "ProbeResult",
    "embedding_cache",
    "eval_mode",
    "model_device",
    "shared_embeddings",
    "undisturbed",
]

#: The embedding cache of the evaluation in progress (:func:`shared_embeddings`), if any.
_EMBEDDINGS: ContextVar[dict[tuple[Any, ...], Any] | None] = ContextVar(
    "retain_embeddings", default=None
)


@dataclass(frozen=True)
class ProbeResult:
    """A probe's score plus details (counts, secondary metrics) that are JSON-serialisable, and
    the per-example contributions to the score when the probe has them (they give the change
    between two models its paired confidence interval: :mod:`retain.paired_statistics`)."""

    score: float
    details: dict[str, Any] = field(default_factory=dict)
    examples: ExampleScores | None = None


@runtime_checkable
class Probe(Protocol):
    """One capability measured on a model.

    ``metric`` names the unit of ``score`` (``"perplexity"``, ``"accuracy"`` ...);
    ``higher_is_better`` says which direction is good, and is never guessed from the name.
    """

    name: str
    metric: str
    higher_is_better: bool

    def evaluate(self, model: torch.nn.Module, tokenizer: Any) -> ProbeResult:
        """Score ``model`` (with its ``tokenizer``, ``None`` for non-text models)."""
        ...


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode with gradients off, then restore its previous mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


@contextmanager
def undisturbed(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """:func:`eval_mode` inside forked random state (torch CPU and the model's accelerator,
    Python's ``random``, NumPy's global state), so evaluating during training changes nothing
    the training run would otherwise draw."""
    device = model_device(model)
    devices = [device.index or 0] if device.type not in ("cpu", "meta") else []
    device_type = device.type if devices else "cuda"
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices, device_type=device_type), eval_mode(model):
            yield model
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


@contextmanager
def shared_embeddings() -> Iterator[None]:
    """Within the block, probes on frozen features that embed the same texts the same way share
    the vectors (:func:`embedding_cache`). :meth:`retain.EvalSuite.evaluate` opens one block per
    evaluation, during which the weights cannot change; it is dropped when the block ends."""
    token = _EMBEDDINGS.set({})
    try:
        yield
    finally:
        _EMBEDDINGS.reset(token)


def embedding_cache() -> dict[tuple[Any, ...], Any] | None:
    """The cache of the :func:`shared_embeddings` block in progress; None outside one."""
    return _EMBEDDINGS.get()
