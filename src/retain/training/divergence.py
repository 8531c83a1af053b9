"""Stop a task whose training diverges: non-finite gradients, or a loss far above its start.

The plain loop (:func:`~retain.training.loop.train_task`) makes two checks per optimizer step, on
figures that are identical on every process, so every process stops at the same step:

* **Gradients.** The global L2 norm ``‖g‖₂ = sqrt(Σ_p Σ_i g_{p,i}²)`` over every parameter's
  gradient, after fp16 unscaling and before clipping and the strategies' ``after_backward``, must
  be finite. It is the norm ``clip_grad_norm_`` returns, so with ``max_grad_norm`` set it costs
  nothing more; without, one read of the gradients (they are not changed, so a run that does not
  diverge is bit-identical to one without the check). Under ``"fp16"`` the loss scaler owns
  overflow (it skips the step and lowers the scale), so the check is off there.
* **Loss** (``TrainConfig.divergence_factor = f``; None turns it off). With the task's per-step
  losses ``ℓ_1, ℓ_2, ...`` (mean nats per target) and the window ``W =`` :data:`WINDOW` steps,
  the reference is ``r = min(ℓ_1, mean(ℓ_1 .. ℓ_W))`` and the recent mean at step ``k ≥ W`` is
  ``m_k = mean(ℓ_{k-W+1} .. ℓ_k)``. Training stops at the first ``k`` with
  ``m_k > f · r`` and ``m_k >`` :data:`FLOOR` (1 nat).

  ``ℓ_1`` is the loss of the weights the task started from (no update yet), so an explosion at
  step 2 cannot inflate the reference; the mean of the first ``W`` keeps one lucky first batch
  from lowering it. The floor keeps a tiny loss that rises (0.001 -> 0.02 nats, a near-perfect
  model's noise) from counting as divergence: below 1 nat per target the geometric mean of the
  probability given to the right target is still above ``e^{-1} ≈ 0.37``.

  Worked example, ``f = 10``: losses 2.30, 1e15, 1e15, 1e15, 1e15 (AdamW at lr 1e6) give
  ``r = min(2.30, 8e14) = 2.30`` and ``m_5 = 8e14 > 23``: stop at step 5. Losses 0.004, 0.003,
  0.002, 0.002, 0.002, then 0.05 for five steps give ``m_10 = 0.05 > 10 · 0.0026`` but
  ``m_10 < 1``: no stop.

The error names the task, the step, the figure and the last good checkpoint: after a non-finite
figure at step ``k``, the newest one saved by step ``k - 1``; after the loss rule, the newest one
saved before the window (by step ``k - W``), since checkpoints inside it may hold diverged weights.
The Hugging Face ``Trainer`` path (:class:`~retain.training.hf.RetainCallback`) has no such checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from retain.errors import RetainError

__all__ = ["FLOOR", "WINDOW", "DivergenceGuard", "gradient_norm"]

WINDOW = 5
"""Steps in the loss windows of the divergence rule."""

FLOOR = 1.0
"""Nats per target the recent mean loss must exceed before it can count as divergence."""


def gradient_norm(model: nn.Module, max_norm: float | None) -> float:
    """The global L2 norm of ``model``'s gradients; with ``max_norm`` also clips them to it.

    With ``max_norm`` this is exactly ``torch.nn.utils.clip_grad_norm_`` (the norm before
    clipping); without, the gradients are only read. No gradient at all gives 0.
    """
    if max_norm is not None:
        return float(nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    total = getattr(nn.utils, "get_total_norm", None)  # torch >= 2.6: fused per device and dtype
    if total is not None:
        return float(total(grads, 2.0))
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g, 2.0).to(device) for g in grads]
    return float(torch.linalg.vector_norm(torch.stack(norms), 2.0))


@dataclass
class DivergenceGuard:
    """The checks of the module docstring for one task.

    Attributes:
        task: the task's name, for the message.
        factor: ``f`` of the loss rule (None: only the gradient check).
        saved: ``saved(step)`` describes the newest complete checkpoint saved by ``step``
            (``"; the last good checkpoint is '...'"``, or ``""``), appended to the message.
    """

    task: str
    factor: float | None
    saved: Callable[[int], str]

    def gradients(self, norm: float, step: int) -> None:
        """Raise when the gradient norm of ``step`` is NaN or infinite (before the update)."""
        if math.isfinite(norm):
            return
        raise RetainError(
            f"task {self.task!r}: the gradient norm is {norm} at step {step}; training "
            f"stopped{self.saved(step - 1)}. Lower the learning rate or check the data"
        )

    def losses(self, losses: Sequence[float]) -> None:
        """Raise when the losses so far (``losses[k - 1]`` is step ``k``'s) meet the loss rule."""
        step, f = len(losses), self.factor
        if f is None or step < WINDOW:
            return
        reference = min(losses[0], sum(losses[:WINDOW]) / WINDOW)
        recent = sum(losses[step - WINDOW :]) / WINDOW
        if recent > FLOOR and recent > f * reference:
            raise RetainError(
                f"task {self.task!r}: training diverged at step {step}: the mean loss of steps "
                f"{step - WINDOW + 1}-{step} is {recent:.4g}, over {f:g} x the task's starting "
                f"loss {reference:.4g}; training stopped{self.saved(step - WINDOW)}. Lower the "
                "learning rate or enable max_grad_norm (divergence_factor=None turns this off)"
            )
