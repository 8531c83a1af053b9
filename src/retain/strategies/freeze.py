"""Freeze parameters selected by a regular expression (the simplest parameter isolation).

A frozen parameter ``theta_i`` gets no gradient, so after any number of steps
``theta_i(t) == theta_i(0)`` bitwise and it cannot forget: the knowledge it holds is isolated
from the new task (the "freeze the lower layers" baseline of transfer learning, e.g. Yosinski et
al. 2014, "How transferable are features in deep neural networks?").
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import nn

from retain.errors import RetainError
from retain.strategies.base import Strategy, register_strategy
from retain.strategies.params import select_parameters

__all__ = ["Freeze"]

FreezeMode = Literal["freeze", "train_only"]


@register_strategy("freeze the parameters matching a regex (or train only those)")
class Freeze(Strategy):
    """Set ``requires_grad=False`` on parameters chosen by a regular expression.

    Args:
        params: regular expression searched (``re.search``) in each dotted parameter name, for
            example ``"embeddings|encoder\\.layer\\.[0-5]\\."``.
        mode: ``"freeze"`` freezes the matching parameters; ``"train_only"`` freezes every
            parameter that does NOT match (matching ones keep their current state, so after
            ``lora`` it narrows training to the adapters it names).

    Freezing is applied once, at ``prepare``, before any optimizer exists. A strategy that
    unfreezes later (``gradual_unfreezing``) may turn frozen parameters back on; list ``freeze``
    after such a strategy only if that is intended. A pattern that matches no parameter, or a
    freeze that leaves nothing trainable, raises :class:`~retain.errors.RetainError`.
    """

    name = "freeze"
    unsharded_only = None  # requires_grad set in prepare(), before sharding: test_fsdp.py

    def __init__(self, params: str, mode: FreezeMode = "freeze") -> None:
        if not isinstance(params, str) or not params:
            raise RetainError(
                f"freeze params must be a regular expression string, got {params!r}; "
                "for example params='embeddings'"
            )
        if mode not in get_args(FreezeMode):
            raise RetainError(f"freeze mode {mode!r} is unknown; use 'freeze' or 'train_only'")
        self.params = params
        self.mode = mode

    def _held(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters this strategy holds frozen."""
        selected = select_parameters(model, self.params, trainable_only=False, what="freeze params")
        chosen = {id(p) for p in selected.values()}
        return [p for p in model.parameters() if (id(p) in chosen) == (self.mode == "freeze")]

    def is_prepared(self, model: nn.Module) -> bool:
        """Every parameter this strategy holds frozen is frozen."""
        inner = getattr(model, "module", model)
        return not any(p.requires_grad for p in self._held(inner))

    def prepare(self, model: nn.Module) -> nn.Module:
        """Freeze the selected parameters in place; returns ``model``."""
        for p in self._held(model):
            p.requires_grad_(False)
        if not any(p.requires_grad for p in model.parameters()):
            raise RetainError(
                f"freeze params={self.params!r} mode={self.mode!r} leaves no trainable parameter "
                f"in {type(model).__name__}; narrow the pattern"
            )
        return model
