"""What ``retain diagnose`` is asked to do: :class:`DiagnoseConfig` (checked when built) and
which diagnostics can run on a pair of models (:func:`skipped_diagnostics`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from retain.distributed import resolve_device
from retain.errors import RetainError

__all__ = ["DIAGNOSTICS", "DiagnoseConfig", "skipped_diagnostics"]

DIAGNOSTICS = ("drift", "importance", "interference", "representation", "output")
_NEEDS_LM = ("importance", "interference", "output")
_NEEDS_DATA = ("importance", "interference")


@dataclass(frozen=True)
class DiagnoseConfig:
    """Everything a diagnosis needs.

    Attributes:
        base, tuned: the models (registry name, folder, hub id; ``tuned`` may be an adapter).
        data: the new task's dataset (registry name, file, hub name), its ``train`` split's text.
        general: held-out general text (prior capability), its ``test`` split (else ``train``).
        text_column: column of ``data`` holding the text (default: the dataset's own, or ``text``).
        general_column: the same for ``general``.
        only: which diagnostics to compute (default None: every one that applies; a named one
            that cannot run is an error).
        samples: sequences of general text for CKA and KL.
        fisher_samples: sequences per Fisher (general text and new task).
        batches: mini-batch pairs for the gradient interference.
        batch_size: sequences per forward pass.
        max_length: tokens per sequence.
        max_tokens: token positions per layer for CKA.
        max_memory_gb: working-set budget in GiB (10⁹·1.074 bytes) for the output shift's
            ``[positions, V]`` logits and the Fisher's micro-batches, on top of the two models
            (None: ``max(256 MiB, ½ × one model's float32 bytes)``, see
            :mod:`retain.diagnostics.memory_budget`). Lower it to fit a small machine; the
            results do not change, only the number of passes.
        top: fraction of parameters counted critical per capability (quadrants).
        exclude: regular expression of parameter names left out of the drift.
        out, overwrite: run directory to create (``None``: print only).
        adapter_base, trust_remote_code, device: as for ``retain audit``.
    """

    base: str
    tuned: str
    data: str | None = None
    general: str = "general_text"
    text_column: str | None = None
    general_column: str | None = None
    only: tuple[str, ...] | None = None
    samples: int = 32
    fisher_samples: int = 16
    batches: int = 4
    batch_size: int = 8
    max_length: int = 128
    max_tokens: int = 2048
    max_memory_gb: float | None = None
    top: float = 0.1
    exclude: str | None = None
    out: Path | None = None
    overwrite: bool = False
    adapter_base: str | None = None
    trust_remote_code: bool = False
    device: str = "auto"
    seed: int = 0

    @property
    def max_memory(self) -> int | None:
        """``max_memory_gb`` in bytes (None: the default budget)."""
        return None if self.max_memory_gb is None else int(self.max_memory_gb * 2**30)

    def __post_init__(self) -> None:
        resolve_device(self.device)
        if isinstance(self.only, str):
            object.__setattr__(self, "only", (self.only,))
        named = self.only
        unknown = [] if named is None else [d for d in named if d not in DIAGNOSTICS]
        if unknown or named == ():
            raise RetainError(
                f"unknown diagnostic {unknown[0] if unknown else '(none)'!r}; choose from "
                f"{', '.join(DIAGNOSTICS)}"
            )
        if self.exclude is not None:
            try:
                re.compile(self.exclude)
            except re.error as exc:
                raise RetainError(
                    f"exclude {self.exclude!r} is not a regular expression: {exc}"
                ) from None
        for name in ("samples", "fisher_samples", "batches", "batch_size", "max_length"):
            if int(getattr(self, name)) < 1:
                raise RetainError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 2:
            raise RetainError(f"max_length must be >= 2, got {self.max_length}")
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise RetainError(
                f"max_memory_gb (--max-memory) must be > 0 GiB (0.5 = 512 MiB), got "
                f"{self.max_memory_gb}"
            )
        if not 0 < self.top < 1:
            raise RetainError(f"top must be a fraction in (0, 1) (0.1 = 10 %), got {self.top}")


def skipped_diagnostics(config: DiagnoseConfig, kind: str) -> dict[str, str]:
    """``{diagnostic: why it cannot run}``; a diagnostic named in ``only`` that cannot run is an
    error instead."""
    skipped: dict[str, str] = {}
    for name in config.only or DIAGNOSTICS:
        if name in _NEEDS_LM and kind != "causal-lm":
            skipped[name] = (
                f"needs a causal language model (a next-token loss); these are {kind} models"
            )
        elif name in _NEEDS_DATA and config.data is None:
            skipped[name] = "needs the new task's data (--data NAME)"
    if config.only is not None and skipped:
        name, reason = next(iter(skipped.items()))
        raise RetainError(f"diagnostic {name!r} cannot run: it {reason}")
    return skipped
