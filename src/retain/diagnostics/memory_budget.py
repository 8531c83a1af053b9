"""Working-memory budgets: how many samples (or positions) a diagnostic processes at once.

Diagnostics that build tensors proportional to ``samples × tokens × (vocabulary or hidden
size)`` (activations kept for a backward pass, full-vocabulary logits) split their input so that
only about ``budget`` bytes of such tensors live at once. The default budget grows with the
model, not with the data: ``max(256 MiB, ½ × the parameters' float32 bytes)``, so the working
set stays a fixed fraction of the model's size as models grow.

Worked example: SmolLM2-135M has 134.5M parameters (538 MB as float32), so the default budget
is 269 MB; a next-token comparison over its 49,152-token vocabulary with 8 float32
``[positions, V]`` buffers live at once then takes ``269e6 // (8 · 4 · 49152) = 171`` positions
per chunk.
"""

from __future__ import annotations

from torch import nn

from retain.errors import RetainError

__all__ = ["MIN_BUDGET", "default_budget", "rows_within"]

MIN_BUDGET = 256 * 2**20  # bytes; below this, per-call overheads dominate


def default_budget(model: nn.Module, budget: int | None = None) -> int:
    """``budget`` if given (bytes, >= 1), else ``max(256 MiB, ½ × 4 bytes × parameters)``."""
    if budget is not None:
        if budget < 1:
            raise RetainError(f"memory budget must be >= 1 byte, got {budget}")
        return int(budget)
    params = sum(p.numel() for p in model.parameters())
    return max(MIN_BUDGET, 2 * params)


def rows_within(budget: int, bytes_per_row: float) -> int:
    """How many rows of ``bytes_per_row`` bytes fit in ``budget`` (at least 1)."""
    if bytes_per_row <= 0:
        return 1 << 30
    return max(1, int(budget // bytes_per_row))
