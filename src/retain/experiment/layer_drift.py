"""Per-layer parameter drift from the starting weights, for the run report.

A layer's relative drift is ``drift_l = ||θ_l - θ0_l||₂ / ||θ0_l||₂`` over all its parameters
together (None when ``||θ0_l|| = 0``), with layers named by
:func:`retain.diagnostics.drift.layer_of`. Weights are the *effective* ones
(:func:`retain.diagnostics.drift.effective_parameters`): a LoRA run's adapters are folded into
their base weights (``W + B A · scaling``), so its update shows where it lands. Parameters added
after the start (a later task's head) are not in the starting weights and are left out. A
sharded (FSDP2) weight is gathered one parameter at a time, so every process must measure.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from retain.diagnostics.drift import effective_parameters, layer_of
from retain.distributed import whole_tensor

__all__ = ["LayerDrift", "layer_of"]


class LayerDrift:
    """Remembers a model's starting weights (float32, CPU) and measures per-layer drift."""

    def __init__(self, model: nn.Module) -> None:
        self.start: dict[str, torch.Tensor] = {
            n: whole_tensor(p).to("cpu", torch.float32, copy=True)
            for n, p in effective_parameters(model).items()
        }
        self.layers: list[str] = list(dict.fromkeys(layer_of(n) for n in self.start))

    def measure(self, model: nn.Module) -> list[float | None]:
        """``drift_l`` for every layer of :attr:`layers`, in order."""
        moved = dict.fromkeys(self.layers, 0.0)
        norm = dict.fromkeys(self.layers, 0.0)
        for name, value in effective_parameters(model).items():
            before = self.start.get(name)
            if before is None or before.shape != value.shape:
                continue
            now = whole_tensor(value).to("cpu", torch.float32)
            layer = layer_of(name)
            moved[layer] += float((now - before).pow(2).sum())
            norm[layer] += float(before.pow(2).sum())
        return [
            math.sqrt(moved[layer]) / math.sqrt(norm[layer]) if norm[layer] > 0 else None
            for layer in self.layers
        ]
