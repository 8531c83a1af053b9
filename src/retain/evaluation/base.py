"""The probe contract: one capability, one score, its direction explicit.

A probe is any object with ``name``, ``higher_is_better``, ``metric`` and
``evaluate(model, tokenizer) -> ProbeResult``. Probes never train the model, run under
``torch.no_grad()`` and leave the model in the mode (train/eval) they found it in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Probe", "ProbeResult", "eval_mode", "model_device"]


@dataclass(frozen=True)
class ProbeResult:
    """A probe's score plus details (counts, secondary metrics) that are JSON-serialisable."""

    score: float
    details: dict[str, Any] = field(default_factory=dict)


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
