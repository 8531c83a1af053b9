"""Forgetting budget: tune a penalty strength online so forgetting stays near a stated budget.

Instead of a strength ``λ`` the user states the forgetting they accept, ``D`` (relative
degradation of the watched capabilities, 0.10 = 10 % worse than the baseline), and
:class:`ForgettingBudget` adjusts the strength of the wrapped EWC (``strength``) or L2-SP
(``alpha``) strategy while training. Every ``every`` optimizer steps it evaluates an
:class:`~retain.evaluation.suite.EvalSuite`, takes the worst relative degradation ``d`` across
capabilities (as in :mod:`retain.training.monitor`: ``(before − after)/|before|`` for scores where
higher is better; positive = worse) and applies a multiplicative controller

    s ← clip(s · exp(gain · (d − D) / D), min_strength, max_strength)

i.e. a proportional controller on ``log s`` whose error is the budget overshoot in units of the
budget: ``d = 2D`` multiplies ``s`` by ``e^gain``, ``d = D`` leaves it unchanged, ``d = 0``
divides it by ``e^gain``. ``s`` has the units of the target's strength (EWC: per nat² of Fisher;
L2-SP: per squared parameter unit). This is a simple heuristic controller, not a method from a
paper; the penalties it tunes are EWC (Kirkpatrick et al., PNAS 2017) and L2-SP (Li, Grandvalet &
Davoine, ICML 2018).

Cost: one suite evaluation per ``every`` optimizer steps (plus one at the first task start when the
suite has no baseline). Evaluation does not disturb training: it runs in eval mode without
gradients and inside a forked RNG (torch CPU and the model's accelerator, Python's ``random`` and
NumPy's global state are restored), as the forgetting monitor does.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from retain.data.task import Task
from retain.errors import RetainError
from retain.evaluation.base import undisturbed
from retain.evaluation.suite import EvalSuite, SuiteResult
from retain.strategies.base import ParamGroup, StateDict, Strategy

__all__ = ["ForgettingBudget", "next_strength"]

#: The strategies whose strength the budget tunes, and the attribute holding it.
SUPPORTED: dict[str, str] = {"ewc": "strength", "l2sp": "alpha"}
#: Where a zero strength restarts from (a multiplicative controller cannot leave 0).
RESTART_STRENGTH = 1.0
_MAX_EXPONENT = 700.0  # exp(700) is finite in float64


def next_strength(s: float, d: float, budget: float, gain: float, lo: float, hi: float) -> float:
    """``clip(s · exp(gain · (d − budget) / budget), lo, hi)``: one step of the controller.

    ``d`` and ``budget`` are relative degradations (0.1 = 10 % worse); ``d = +inf`` (a zero
    baseline that degraded) gives ``hi``.

    >>> next_strength(2.0, 0.1, 0.1, 1.0, 1e-6, 1e9)
    2.0
    """
    if math.isnan(d):
        raise RetainError("forgetting_budget got a NaN degradation; check the suite's probes")
    exponent = min(gain * (d - budget) / budget, _MAX_EXPONENT)
    return min(max(s * math.exp(exponent), lo), hi)


class ForgettingBudget(Strategy):
    """Wraps an EWC or L2-SP strategy and tunes its strength so forgetting stays near a budget.

    Control law (see the module docstring): every ``every`` steps,
    ``s ← clip(s · exp(gain · (d − D) / D), min_strength, max_strength)`` with ``d`` the worst
    relative degradation of ``suite`` against its baseline and ``D`` = ``max_degradation``. A
    strength of 0 restarts from ``RESTART_STRENGTH`` (1.0) at the first update, since a
    multiplicative controller cannot move away from 0.

    Every hook is forwarded to ``target``, so list only the budget:
    ``chain(ForgettingBudget(EWC(strength=10), suite, 0.10))``. Neither EWC nor L2-SP changes the
    model in ``prepare``, so the budget has no ``prepare`` of its own.

    Args:
        target: an ``EWC`` or ``L2SP`` instance (its strength is changed in place).
        suite: the capabilities to watch; a baseline already stored is kept, otherwise the model
            at the first task start is the baseline.
        max_degradation: ``D`` > 0, the accepted relative degradation (0.10 = 10 % worse).
        every: optimizer steps between evaluations (>= 1).
        gain: controller gain (> 0): the log-strength change per budget of overshoot.
        min_strength: lower clip of the strength (>= 0).
        max_strength: upper clip of the strength (>= ``min_strength``).
        tokenizer: passed to ``suite.evaluate``.
    """

    name = "forgetting_budget"

    def __init__(
        self,
        target: Strategy,
        suite: EvalSuite,
        max_degradation: float,
        every: int = 10,
        gain: float = 1.0,
        min_strength: float = 1e-6,
        max_strength: float = 1e9,
        tokenizer: Any = None,
    ) -> None:
        if not isinstance(target, Strategy) or target.name not in SUPPORTED:
            got = target.name if isinstance(target, Strategy) else type(target).__name__
            raise RetainError(
                f"forgetting_budget cannot tune {got!r}; wrap one of {sorted(SUPPORTED)} "
                "(e.g. EWC(strength=10) or L2SP(alpha=0.01))"
            )
        if not isinstance(suite, EvalSuite) or not suite.probes:
            raise RetainError("forgetting_budget needs an EvalSuite with at least one probe")
        max_degradation = float(max_degradation)
        if not 0 < max_degradation < math.inf:
            raise RetainError(
                f"forgetting_budget max_degradation must be > 0 and finite (0.1 = 10 % worse), "
                f"got {max_degradation}"
            )
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise RetainError(f"forgetting_budget every must be an integer >= 1, got {every!r}")
        gain = float(gain)
        if not 0 < gain < math.inf:
            raise RetainError(f"forgetting_budget gain must be > 0 and finite, got {gain}")
        min_strength, max_strength = float(min_strength), float(max_strength)
        if not 0 <= min_strength <= max_strength < math.inf:
            raise RetainError(
                "forgetting_budget needs 0 <= min_strength <= max_strength < inf, got "
                f"min_strength={min_strength}, max_strength={max_strength}"
            )
        self.target = target
        self.suite = suite
        self.max_degradation = max_degradation
        self.every = every
        self.gain = gain
        self.min_strength = min_strength
        self.max_strength = max_strength
        self.tokenizer = tokenizer
        self.history: list[dict[str, float]] = []

    @property
    def strength(self) -> float:
        """The target's current strength (EWC ``strength`` or L2-SP ``alpha``)."""
        return float(getattr(self.target, SUPPORTED[self.target.name]))

    @strength.setter
    def strength(self, value: float) -> None:
        setattr(self.target, SUPPORTED[self.target.name], float(value))

    def worst_degradation(self, model: nn.Module) -> float:
        """Evaluate the suite (undisturbing) and return the worst relative degradation."""
        changes = self.suite.compare(self._evaluate(model))
        worst = -math.inf
        for c in changes:
            d = c.change
            if d.before == 0:
                rel = math.inf if d.degradation > 0 else 0.0
            else:
                rel = d.relative_degradation
            worst = max(worst, rel)
        return worst

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        """Store the suite's baseline (if it has none), then the target's ``on_task_start``."""
        if self.suite.baseline is None:
            self.suite.set_baseline(self._evaluate(model))
        self.target.on_task_start(model, task)

    def on_step(self, step: int, model: nn.Module) -> None:
        """Forward the step; every ``every`` steps evaluate and update the strength."""
        self.target.on_step(step, model)
        if step % self.every:
            return
        d = self.worst_degradation(model)
        s = self.strength if self.strength > 0 else RESTART_STRENGTH
        s = next_strength(
            s, d, self.max_degradation, self.gain, self.min_strength, self.max_strength
        )
        self.strength = s
        self.history.append({"step": float(step), "degradation": d, "strength": s})

    def train_data(self, task: Task, model: nn.Module) -> Task:
        return self.target.train_data(task, model)

    def param_groups(self, model: nn.Module, lr: float) -> list[ParamGroup] | None:
        return self.target.param_groups(model, lr)

    def lr_scheduler(self, optimizer: Optimizer, num_training_steps: int) -> LRScheduler | None:
        return self.target.lr_scheduler(optimizer, num_training_steps)

    def after_backward(self, model: nn.Module) -> None:
        self.target.after_backward(model)

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        self.target.on_epoch_end(epoch, model)

    def on_task_end(self, model: nn.Module, task: Task) -> None:
        self.target.on_task_end(model, task)

    def penalty(self, model: nn.Module) -> Tensor | None:
        return self.target.penalty(model)

    def state_dict(self) -> StateDict:
        """The target's state under ``"target."`` plus ``strength`` and ``history`` (JSON)."""
        state: StateDict = {f"target.{k}": v for k, v in self.target.state_dict().items()}
        state["strength"] = self.strength
        state["history"] = [dict(h) for h in self.history]
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what :meth:`state_dict` returned."""
        stray = [
            k for k in state if k not in ("strength", "history") and not k.startswith("target.")
        ]
        if stray:
            raise RetainError(
                f"forgetting_budget state has unknown key {stray[0]!r}; pass a state it saved"
            )
        self.target.load_state_dict(
            {k[len("target.") :]: v for k, v in state.items() if k.startswith("target.")}
        )
        if "strength" in state:
            self.strength = float(state["strength"])
        self.history = [{str(k): float(v) for k, v in h.items()} for h in state.get("history", [])]

    def describe(self) -> str:
        return (
            f"{self.name}(target={self.target.describe()}, max_degradation={self.max_degradation},"
            f" every={self.every}, gain={self.gain})"
        )

    def _evaluate(self, model: nn.Module) -> SuiteResult:
        with undisturbed(model):
            return self.suite.evaluate(model, self.tokenizer)
