"""Learning-rate warm-up and decay schedules, as ``torch`` ``LambdaLR`` schedulers.

A warm-up keeps the first updates of a fine-tuning small while Adam's moment estimates are still
noisy, so the pretrained weights are not thrown far at the start (Howard & Ruder 2018, ULMFiT;
Devlin et al. 2019, BERT). ``t`` is the number of optimizer steps taken (0 before the first one)
and ``T`` the task's number of optimizer steps; the rate at step ``t`` is ``lr * f(t)`` with

``linear``      ``f = t / w`` for ``t < w``, then ``max(0, (T - t) / (T - w))``
``constant``    ``f = t / w`` for ``t < w``, then 1
``cosine``      ``f = t / w`` for ``t < w``, then ``0.5 * (1 + cos(pi * (t - w) / (T - w)))``
``slanted_triangular`` (Howard & Ruder 2018, eq. 3)::

    cut = floor(T * cut_frac)
    p   = t / cut                                        if t < cut
          1 - (t - cut) / (cut * (1 / cut_frac - 1))     otherwise
    f   = (1 + p * (ratio - 1)) / ratio

where ``w`` is ``warmup_steps`` (or ``round(warmup_ratio * T)``). The first three are
``transformers.get_*_schedule_with_warmup``. For slanted triangular, ``p`` is clamped at 0 so the
rate never falls below ``lr / ratio`` (the paper's formula would when ``T * cut_frac`` is not a
whole number, since ``cut`` is floored). ``LambdaLR`` scales each parameter group's own initial
rate, so layer-wise rates keep their ratios.
"""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from retain.errors import RetainError
from retain.strategies.base import Strategy, register_strategy

__all__ = ["DEFAULT_WARMUP_RATIO", "Warmup", "slanted_triangular_factor"]

Schedule = Literal["linear", "constant", "cosine", "slanted_triangular"]
_SCHEDULES = ("linear", "constant", "cosine", "slanted_triangular")
#: Warm-up fraction used when neither ``warmup_steps`` nor ``warmup_ratio`` is given.
DEFAULT_WARMUP_RATIO = 0.1


def slanted_triangular_factor(t: int, total: int, cut_frac: float, ratio: float) -> float:
    """Slanted triangular learning-rate factor ``lr_t / lr_max`` at step ``t`` of ``total``
    (Howard & Ruder 2018, eq. 3), with ``p`` clamped at 0.

    >>> slanted_triangular_factor(2, 20, 0.1, 32.0)
    1.0
    """
    cut = math.floor(total * cut_frac)
    if cut < 1:
        raise RetainError(
            f"slanted_triangular needs total steps * cut_frac >= 1, got {total} * {cut_frac}; "
            "raise cut_frac or train for more steps"
        )
    p = t / cut if t < cut else 1.0 - (t - cut) / (cut * (1.0 / cut_frac - 1.0))
    return (1.0 + max(p, 0.0) * (ratio - 1.0)) / ratio


@register_strategy(
    "learning-rate warm-up then linear, constant, cosine or slanted-triangular decay"
)
class Warmup(Strategy):
    """Warm the learning rate up from 0 over ``warmup_steps`` optimizer steps (or the fraction
    ``warmup_ratio`` of the task's steps), then follow ``schedule``; see the module docstring for
    each formula (Howard & Ruder 2018 for ``slanted_triangular``).

    Args:
        warmup_steps: warm-up length in optimizer steps; give this or ``warmup_ratio``, not both.
        warmup_ratio: warm-up length as a fraction of the task's steps, rounded to whole steps;
            0.1 when neither is given (except for slanted triangular).
        schedule: the rate after warm-up: ``"linear"`` decay to 0, ``"constant"``, ``"cosine"``
            decay to 0, or ``"slanted_triangular"``, which has its own rise (``cut_frac``) and
            takes neither ``warmup_steps`` nor ``warmup_ratio``.
        cut_frac: slanted triangular: fraction of steps spent increasing the rate.
        ratio: slanted triangular: how much smaller the lowest rate is than the peak.
    """

    name = "warmup"
    unsharded_only = None  # an lr schedule only: tests/training/test_fsdp.py

    def __init__(
        self,
        warmup_steps: int | None = None,
        warmup_ratio: float | None = None,
        schedule: Schedule = "linear",
        cut_frac: float = 0.1,
        ratio: float = 32.0,
    ) -> None:
        if schedule not in _SCHEDULES:
            raise RetainError(
                f"warmup schedule {schedule!r} is unknown; use one of {', '.join(_SCHEDULES)}"
            )
        given = [
            k
            for k, v in (("warmup_steps", warmup_steps), ("warmup_ratio", warmup_ratio))
            if v is not None
        ]
        if schedule == "slanted_triangular":
            if given:
                raise RetainError(
                    f"warmup schedule 'slanted_triangular' rises for cut_frac of the steps; drop "
                    f"{given[0]} (or set cut_frac)"
                )
        elif len(given) > 1:
            raise RetainError(
                "warmup takes one of warmup_steps and warmup_ratio, got both; drop one"
            )
        elif not given:
            warmup_ratio = DEFAULT_WARMUP_RATIO
        if warmup_steps is not None and (
            isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0
        ):
            raise RetainError(f"warmup_steps must be a whole number >= 0, got {warmup_steps!r}")
        if warmup_ratio is not None and not (0.0 <= float(warmup_ratio) <= 1.0):
            raise RetainError(f"warmup_ratio must be in [0, 1], got {warmup_ratio}")
        if not (0.0 < float(cut_frac) < 1.0):
            raise RetainError(f"cut_frac must be in (0, 1), got {cut_frac}; the paper uses 0.1")
        if not (math.isfinite(float(ratio)) and float(ratio) >= 1.0):
            raise RetainError(f"ratio must be a finite number >= 1, got {ratio}; the paper uses 32")
        self.warmup_steps = warmup_steps
        self.warmup_ratio = None if warmup_ratio is None else float(warmup_ratio)
        self.schedule: Schedule = schedule
        self.cut_frac = float(cut_frac)
        self.ratio = float(ratio)

    def num_warmup_steps(self, num_training_steps: int) -> int:
        """Warm-up length in optimizer steps for a task of ``num_training_steps`` steps
        (``round(warmup_ratio * T)`` when given as a ratio; 0 for slanted triangular)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        if self.warmup_ratio is not None:
            return round(self.warmup_ratio * num_training_steps)
        return 0

    def lr_scheduler(self, optimizer: Optimizer, num_training_steps: int) -> LambdaLR:
        """A ``LambdaLR`` over ``optimizer`` for a task of ``num_training_steps`` optimizer steps;
        call ``scheduler.step()`` after every ``optimizer.step()``."""
        total = int(num_training_steps)
        if total < 1:
            raise RetainError(f"warmup needs at least 1 training step, got {num_training_steps}")
        if self.schedule == "slanted_triangular":
            slanted_triangular_factor(0, total, self.cut_frac, self.ratio)  # validates cut >= 1
            cut_frac, ratio = self.cut_frac, self.ratio
            return LambdaLR(
                optimizer, lambda t: slanted_triangular_factor(t, total, cut_frac, ratio)
            )
        warmup = self.num_warmup_steps(total)
        if warmup > total:
            raise RetainError(
                f"warmup_steps={warmup} is longer than the task's {total} optimizer steps, so the "
                "peak rate is never reached; lower warmup_steps or use warmup_ratio"
            )
        scheduler: LambdaLR
        if self.schedule == "linear":
            linear = get_linear_schedule_with_warmup  # untyped in transformers
            scheduler = linear(optimizer, warmup, total)  # type: ignore[no-untyped-call]
        elif self.schedule == "cosine":
            scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
        else:
            scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
        return scheduler
