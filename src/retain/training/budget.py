"""Forgetting budget: tune a penalty strength online so forgetting stays near a stated budget.

Instead of a strength ``λ`` the user states the forgetting they accept, ``D`` (relative
degradation of the watched capabilities, 0.10 = 10 % worse than the baseline), and
:class:`ForgettingBudget` adjusts the strength of the wrapped EWC (``strength``) or L2-SP
(``alpha``) strategy while training. Every ``every`` optimizer steps it evaluates an
:class:`~retain.evaluation.suite.EvalSuite`, takes the worst relative degradation ``d`` across
capabilities (as in :mod:`retain.training.monitor`: ``(before − after)/|before|`` for scores where
higher is better; positive = worse) and updates the strength ``s`` with a controller on
``log s``. The default (``controller="multiplicative"``, :func:`next_strength`) is

    s ← clip(s · exp(gain · (d − D) / D), min_strength, max_strength)

Each update moves ``log s`` by ``gain`` times the budget overshoot in units of the budget,
``e = (d − D)/D``: ``d = 2D`` multiplies ``s`` by ``e^gain``, ``d = D`` leaves it unchanged,
``d = 0`` divides it by ``e^gain``. Summed over updates this is integral action on ``log s``
(``log s_k = log s_0 + gain · Σ_j e_j``, clipped).

``controller="pi"`` adds a proportional term: a standard PI controller (Åström & Murray, *Feedback
Systems*, Princeton 2008, ch. 10 "PID Control", incl. §10.4 "Integrator windup") acting on
``log s`` with the same error ``e_k = (d_k − D)/D`` at update ``k`` (:func:`pi_strength`):

    I_k = clip(I_{k−1} + e_k, (ln lo − ln s_0)/k_i, (ln hi − ln s_0)/k_i),   I_0 = 0
    s_k = clip(s_0 · exp(k_p · e_k + k_i · I_k), lo, hi)

with ``k_p`` = ``proportional_gain``, ``k_i`` = ``integral_gain``, ``lo``/``hi`` =
``min_strength``/``max_strength`` and ``s_0`` the strength at the first update. The clip on ``I``
is the clamping form of anti-windup: the integral never holds more than what saturates the
strength on its own, so once the error changes sign the strength leaves its bound at the next
update instead of after the accumulated surplus has been worked off. With ``k_p = 0`` the PI law
equals the multiplicative law with ``gain = k_i`` (up to rounding). The proportional term reacts
to the current overshoot at once and vanishes when ``d = D``; the integral term holds the strength
that keeps it there. The defaults ``k_p = k_i = 0.5`` come from a grid over ``k_p`` in
{0.25, 0.5, 1, 2} and ``k_i`` in {0.1, 0.25, 0.5, 1} on the permuted-digits set-up of the tests
(EWC from strength 1, D = 0.10, 3 seeds): final degradations 0.108, 0.095, 0.060, against 0.093,
0.137, 0.018 for the multiplicative law with gain 1. On SmolLM2-135M adapted to SMS text
(``examples/budget_smollm2.py``, L2-SP from alpha 0.1, D = 0.10, 3 seeds) the PI law ended
further above the budget than the multiplicative law (watched perplexity 13.7-19.5 % worse against
9.1-12.4 %): there most forgetting happens in the first few steps, and the proportional term gives
strength back as soon as the overshoot shrinks, although forgetting already incurred recedes only
slowly. The multiplicative law stays the default.

``s`` has the units of the target's strength (EWC: per nat² of Fisher; L2-SP: per squared parameter
unit). Controlling a penalty strength this way is a heuristic of this package, not a method from a
paper; the penalties it tunes are EWC (Kirkpatrick et al., PNAS 2017) and L2-SP (Li, Grandvalet &
Davoine, ICML 2018).

Cost: one suite evaluation per ``every`` optimizer steps (plus one at the first task start when the
suite has no baseline). Evaluation does not disturb training: it runs in eval mode without
gradients and inside a forked RNG (torch CPU and the model's accelerator, Python's ``random`` and
NumPy's global state are restored), as the forgetting monitor does.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from retain.data.task import Task
from retain.distributed import from_main_process, refuse_sharded
from retain.errors import RetainError
from retain.evaluation.base import undisturbed
from retain.evaluation.suite import CapabilityScore, EvalSuite, SuiteResult
from retain.strategies.base import ParamGroup, StateDict, Strategy, tunable_strategies

__all__ = ["Controller", "ForgettingBudget", "next_strength", "pi_strength"]

Controller = Literal["multiplicative", "pi"]

#: Where a zero strength restarts from (a controller on ``log s`` cannot leave 0).
RESTART_STRENGTH = 1.0
_MAX_EXPONENT = 700.0  # exp(700) is finite in float64
_MAX_ERROR = 1e12  # an infinite error (d = inf) is capped to this before any arithmetic
_OWN_KEYS = ("strength", "integral", "reference", "baseline", "history")


def _gain(name: str, value: float, zero_ok: bool = True) -> float:
    """``value`` as a float, refused unless finite and > 0 (>= 0 when ``zero_ok``)."""
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise RetainError(f"forgetting_budget {name} must be {bound} and finite, got {value}")
    return value


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


def pi_strength(
    integral: float,
    d: float,
    budget: float,
    reference: float,
    proportional_gain: float,
    integral_gain: float,
    lo: float,
    hi: float,
) -> tuple[float, float]:
    """One PI step on ``log s``; returns ``(strength s_k, integral I_k)``.

    With ``e = (d − budget)/budget``, ``k_p`` = ``proportional_gain``, ``k_i`` = ``integral_gain``
    and ``s_0`` = ``reference`` (> 0)::

        I_k = clip(integral + e, (ln lo − ln s_0)/k_i, (ln hi − ln s_0)/k_i)
        s_k = clip(s_0 · exp(k_p · e + k_i · I_k), lo, hi)

    The clip on ``I_k`` is anti-windup (see the module docstring). ``d = +inf`` gives ``hi``.

    >>> pi_strength(0.0, 0.2, 0.1, 1.0, 0.5, 0.25, 1e-6, 1e9)  # e = 1: exp(0.5 + 0.25)
    (2.117000016612675, 1.0)
    """
    if math.isnan(d):
        raise RetainError("forgetting_budget got a NaN degradation; check the suite's probes")
    error = min(max((d - budget) / budget, -_MAX_ERROR), _MAX_ERROR)
    log_lo = math.log(lo) if lo > 0 else -math.inf
    log_hi, log_ref = math.log(hi), math.log(reference)
    floor, ceiling = (log_lo - log_ref) / integral_gain, (log_hi - log_ref) / integral_gain
    integral = min(max(integral + error, floor), ceiling)
    log_s = min(log_ref + proportional_gain * error + integral_gain * integral, log_hi)
    return min(max(math.exp(log_s), lo), hi), integral


class ForgettingBudget(Strategy):
    """Wraps an EWC or L2-SP strategy and tunes its strength so forgetting stays near a budget.

    Control law (see the module docstring): every ``every`` steps, with ``d`` the worst relative
    degradation of ``suite`` against its baseline, ``D`` = ``max_degradation`` and
    ``e = (d − D)/D``, either (``controller="multiplicative"``, :func:`next_strength`)
    ``s ← clip(s · exp(gain · e), min_strength, max_strength)``, or (``controller="pi"``,
    :func:`pi_strength`) the PI law ``s_k = clip(s_0 · exp(k_p e_k + k_i I_k), ...)`` with the
    clamped integral ``I_k`` of the errors. A strength of 0 restarts from ``RESTART_STRENGTH``
    (1.0) at the first update (it is ``s_0`` for the PI law), since a controller on ``log s``
    cannot move away from 0.

    Every hook is forwarded to ``target``, so list only the budget:
    ``chain(ForgettingBudget(EWC(strength=10), suite, 0.10))``. Neither EWC nor L2-SP changes the
    model in ``prepare``, so the budget has no ``prepare`` of its own.

    Args:
        target: an ``EWC`` or ``L2SP`` instance (its strength is changed in place).
        suite: the capabilities to watch; a baseline already stored is kept, otherwise the model
            at the first task start is the baseline.
        max_degradation: ``D`` > 0, the accepted relative degradation (0.10 = 10 % worse).
        every: optimizer steps between evaluations (>= 1).
        gain: multiplicative-law gain (> 0; default 1.0): the log-strength change per update
            per budget of overshoot. Only with ``controller="multiplicative"``.
        min_strength: lower clip of the strength (>= 0).
        max_strength: upper clip of the strength (> 0, >= ``min_strength``).
        tokenizer: passed to ``suite.evaluate``.
        controller: ``"multiplicative"`` (integral action only) or ``"pi"``.
        proportional_gain: ``k_p`` of the PI law (>= 0; default 0.5): the log-strength offset per
            budget of current overshoot. Only with ``controller="pi"``.
        integral_gain: ``k_i`` of the PI law (> 0; default 0.5): the log-strength change per
            update per budget of overshoot, accumulated. Only with ``controller="pi"``.
    """

    name = "forgetting_budget"
    #: its evaluations are broadcast from rank 0; the target's own declaration is checked at
    #: each task's start
    unsharded_only = None

    def __init__(
        self,
        target: Strategy,
        suite: EvalSuite,
        max_degradation: float,
        every: int = 10,
        gain: float | None = None,
        min_strength: float = 1e-6,
        max_strength: float = 1e9,
        tokenizer: Any = None,
        controller: Controller = "multiplicative",
        proportional_gain: float | None = None,
        integral_gain: float | None = None,
    ) -> None:
        if not isinstance(target, Strategy) or target.tunable_strength is None:
            got = target.name if isinstance(target, Strategy) else type(target).__name__
            raise RetainError(
                f"forgetting_budget cannot tune {got!r}; wrap one of {tunable_strategies()} "
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
        if controller not in ("multiplicative", "pi"):
            raise RetainError(
                f"forgetting_budget controller must be 'multiplicative' or 'pi', got {controller!r}"
            )
        given = {
            "gain": gain,
            "proportional_gain": proportional_gain,
            "integral_gain": integral_gain,
        }
        foreign = ["gain"] if controller == "pi" else ["proportional_gain", "integral_gain"]
        for name in foreign:
            if given[name] is not None:
                use = "proportional_gain/integral_gain" if controller == "pi" else "gain"
                raise RetainError(
                    f"forgetting_budget {name} does not apply to controller={controller!r}; "
                    f"set {use} instead"
                )
        gain = _gain("gain", 1.0 if gain is None else gain, zero_ok=False)
        kp = _gain("proportional_gain", 0.5 if proportional_gain is None else proportional_gain)
        ki = _gain("integral_gain", 0.5 if integral_gain is None else integral_gain, zero_ok=False)
        min_strength, max_strength = float(min_strength), float(max_strength)
        if not 0 <= min_strength <= max_strength < math.inf or max_strength == 0:
            raise RetainError(
                "forgetting_budget needs 0 <= min_strength <= max_strength < inf and "
                f"max_strength > 0, got min_strength={min_strength}, max_strength={max_strength}"
            )
        self.target = target
        self.suite = suite
        self.max_degradation = max_degradation
        self.every = every
        self.gain = gain
        self.min_strength = min_strength
        self.max_strength = max_strength
        self.tokenizer = tokenizer
        self.controller: Controller = controller
        self.proportional_gain = kp
        self.integral_gain = ki
        #: PI state: the clamped integral of the errors, and ``s_0`` (None before the first update).
        self.integral = 0.0
        self.reference: float | None = None
        self.history: list[dict[str, float]] = []

    @property
    def strength(self) -> float:
        """The target's current strength (its declared ``tunable_strength`` attribute: EWC's
        ``strength``, L2-SP's ``alpha``)."""
        return float(getattr(self.target, self._attribute))

    @strength.setter
    def strength(self, value: float) -> None:
        setattr(self.target, self._attribute, float(value))

    @property
    def _attribute(self) -> str:
        attribute = self.target.tunable_strength
        assert attribute is not None  # checked in __init__
        return attribute

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
        """Store the suite's baseline (if it has none), then the target's ``on_task_start``
        (a target that cannot train a sharded model is refused on one)."""
        if self.target.unsharded_only is not None:
            refuse_sharded(model, self.target.name, self.target.unsharded_only)
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
        if self.controller == "pi":
            if self.reference is None:
                self.reference = s
            s, self.integral = pi_strength(
                self.integral,
                d,
                self.max_degradation,
                self.reference,
                self.proportional_gain,
                self.integral_gain,
                self.min_strength,
                self.max_strength,
            )
        else:
            s = next_strength(
                s, d, self.max_degradation, self.gain, self.min_strength, self.max_strength
            )
        self.strength = s
        entry = {"step": float(step), "degradation": d, "strength": s}
        if self.controller == "pi":
            entry["integral"] = self.integral
        self.history.append(entry)

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
        """The target's state under ``"target."`` plus ``strength``, the PI state (``integral``,
        ``reference``: None before the first PI update), the suite's ``baseline`` scores (what
        ``d`` is measured against; None before the first task) and ``history``, all JSON."""
        state: StateDict = {f"target.{k}": v for k, v in self.target.state_dict().items()}
        state["strength"] = self.strength
        state["integral"] = self.integral
        state["reference"] = self.reference
        base = self.suite.baseline
        state["baseline"] = (
            None
            if base is None
            else {
                n: {"metric": c.metric, "higher_is_better": c.higher_is_better, "score": c.score}
                for n, c in base.scores.items()
            }
        )
        state["history"] = [dict(h) for h in self.history]
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what :meth:`state_dict` returned (a saved baseline replaces the suite's, so a
        resumed run measures degradation against the same scores)."""
        stray = [k for k in state if k not in _OWN_KEYS and not k.startswith("target.")]
        if stray:
            raise RetainError(
                f"forgetting_budget state has unknown key {stray[0]!r}; pass a state it saved"
            )
        self.target.load_state_dict(
            {k[len("target.") :]: v for k, v in state.items() if k.startswith("target.")}
        )
        if "strength" in state:
            self.strength = float(state["strength"])
        self.integral = float(state.get("integral", 0.0))
        reference = state.get("reference")
        self.reference = None if reference is None else float(reference)
        if state.get("baseline") is not None:
            scores = {
                str(n): CapabilityScore(
                    str(n), str(c["metric"]), bool(c["higher_is_better"]), float(c["score"])
                )
                for n, c in state["baseline"].items()
            }
            self.suite.set_baseline(SuiteResult(self.suite.name, scores))
        self.history = [{str(k): float(v) for k, v in h.items()} for h in state.get("history", [])]

    def describe(self) -> str:
        gains = (
            f"proportional_gain={self.proportional_gain}, integral_gain={self.integral_gain}"
            if self.controller == "pi"
            else f"gain={self.gain}"
        )
        return (
            f"{self.name}(target={self.target.describe()}, max_degradation={self.max_degradation},"
            f" every={self.every}, controller={self.controller!r}, {gains})"
        )

    def _evaluate(self, model: nn.Module) -> SuiteResult:
        """The suite's scores, as rank 0 measured them (so every rank tunes alike)."""
        with undisturbed(model):
            result: SuiteResult = from_main_process(self.suite.evaluate(model, self.tokenizer))
            return result
