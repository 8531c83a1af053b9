"""A plain multilayer perceptron for pixel tasks (the permuted-MNIST network of the EWC paper)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """``Linear -> ReLU`` per hidden width, then a linear head; ``forward(pixel_values)`` = logits.

    ``MLP(784, [512], 10)`` is the 784-512-10 network used for permuted MNIST.
    """

    def __init__(self, inputs: int, hidden: Sequence[int], outputs: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, outputs)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Logits ``[N, outputs]`` for ``pixel_values`` ``[N, inputs]``."""
        logits: Tensor = self.head(self.body(pixel_values))
        return logits
