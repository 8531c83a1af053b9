"""Per-layer parameter drift from the starting weights, for the run report.

Parameters are grouped into layers by name: everything up to and including the first numeric
component (``encoder.layer.3.attention.self.query.weight`` -> ``encoder.layer.3``), or, without
one, the module path (``embeddings.word_embeddings.weight`` -> ``embeddings.word_embeddings``).
A layer's relative drift is

    drift_l = ||theta_l - theta0_l||_2 / ||theta0_l||_2

over all of its parameters together (None when ``||theta0_l|| = 0``). PEFT wrappers are seen
through (``base_model.model.`` and ``.base_layer`` are dropped from names); adapter weights
themselves (LoRA ``lora_A``/``lora_B``) have no starting value and are left out, so a LoRA run
shows the frozen base weights not moving: its update lives in the adapter.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

__all__ = ["LayerDrift", "layer_of"]

_PEFT_PREFIX = "base_model.model."


def _plain(name: str) -> str:
    name = name.removeprefix(_PEFT_PREFIX)
    return name.replace(".base_layer", "").replace(".original_module", "")


def layer_of(name: str) -> str:
    """The layer a parameter belongs to.

    >>> layer_of("encoder.layer.3.attention.self.query.weight")
    'encoder.layer.3'
    >>> layer_of("embeddings.word_embeddings.weight")
    'embeddings.word_embeddings'
    >>> layer_of("head.bias")
    'head'
    """
    parts = name.split(".")
    for k, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: k + 1])
    return ".".join(parts[:-1]) or name


class LayerDrift:
    """Remembers a model's starting weights (float32, CPU) and measures per-layer drift."""

    def __init__(self, model: nn.Module) -> None:
        self.start: dict[str, torch.Tensor] = {
            _plain(n): p.detach().to("cpu", torch.float32, copy=True)
            for n, p in model.named_parameters()
        }
        self.layers: list[str] = list(dict.fromkeys(layer_of(n) for n in self.start))

    def measure(self, model: nn.Module) -> list[float | None]:
        """``drift_l`` for every layer of :attr:`layers`, in order."""
        moved = dict.fromkeys(self.layers, 0.0)
        norm = dict.fromkeys(self.layers, 0.0)
        for raw, param in model.named_parameters():
            name = _plain(raw)
            if name not in self.start or re.search(r"lora_|modules_to_save", raw):
                continue
            before = self.start[name]
            now = param.detach().to("cpu", torch.float32)
            layer = layer_of(name)
            moved[layer] += float((now - before).pow(2).sum())
            norm[layer] += float(before.pow(2).sum())
        return [
            math.sqrt(moved[layer]) / math.sqrt(norm[layer]) if norm[layer] > 0 else None
            for layer in self.layers
        ]
