"""The strategy contract: a small object with optional hooks, and the registry of strategies.

Both training hosts (the plain loop in :mod:`retain.training.loop` and the Hugging Face
``Trainer`` callback in :mod:`retain.training.hf`) call the same hooks in the same order:

=====================================  ===================================================
hook                                   called
=====================================  ===================================================
``prepare(model) -> model``            once, before any optimizer exists (PEFT, freezing)
``on_task_start(model, task)``         before each task's optimizer is built (anchors, adapters)
``train_data(task, model) -> task``    when a task's training data is built (replay)
``param_groups(model, lr)``            when the optimizer is built (layer-wise learning rates)
``lr_scheduler(optimizer, steps)``     when the scheduler is built (warmup)
``after_backward(model)``              every optimizer step, after gradients exist and after
                                       gradient clipping (penalty gradients, A-GEM projection)
``on_step(step, model)``               after every optimizer step (gradual unfreezing)
``on_epoch_end(epoch, model)``         after every epoch
``on_task_end(model, task)``           after each task, with the task's own data (Fisher, buffers)
``state_dict()`` / ``load_state_dict`` checkpoint and resume
=====================================  ===================================================

Penalties are written as gradient transforms (``g += dR/dθ``), so they need no autograd graph and
work inside any ``Trainer`` subclass; :meth:`Strategy.penalty` gives the same penalty in loss
space for users who add it to their own loss (a test checks that the two agree).

A strategy's ``state_dict`` maps flat string keys to tensors or JSON values (numbers, strings,
lists); :mod:`retain.strategies.state` saves it as safetensors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from retain.data.task import Task
from retain.errors import RetainError
from retain.records.run import TaskLog
from retain.registry import Registry

__all__ = [
    "STRATEGIES",
    "ParamGroup",
    "StateDict",
    "Strategy",
    "build_strategy",
    "check_strength",
    "conflict_reason",
    "load_builtin_strategies",
    "overrides",
    "parameters_line",
    "register_strategy",
    "tunable_strategies",
]

StateDict = dict[str, Any]
ParamGroup = dict[str, Any]

STRATEGIES: Registry[type[Strategy]] = Registry(
    "strategy", loader=lambda: load_builtin_strategies()
)

S = TypeVar("S", bound="type[Strategy]")


class Strategy:
    """Base of every strategy: each hook does nothing until a strategy overrides it.

    Subclasses set ``name`` (the registry name) and take their parameters as keyword arguments,
    validated in ``__init__`` with a :class:`~retain.errors.RetainError` that names the fix.
    """

    name: ClassVar[str] = "strategy"
    #: True when the strategy unfreezes parameters later, so the optimizer must hold every one.
    needs_all_parameters_in_optimizer: ClassVar[bool] = False
    #: The attribute holding the strength a forgetting budget may tune; None: nothing to tune.
    tunable_strength: ClassVar[str | None] = None
    #: Registry names of strategies this one does not combine with, and the reason why.
    conflicts: ClassVar[Mapping[str, str]] = {}
    #: Why the strategy cannot train an FSDP-sharded model (refused at the start of a task);
    #: None for a strategy that works on local shards (tested against one process).
    unsharded_only: ClassVar[str | None] = "it is not tested under FSDP2 yet"
    #: The task :meth:`Chain.begin_task <retain.strategies.chain.Chain.begin_task>` last began
    #: on this strategy (the Trainer callback checks it); None before any.
    begun_task: str | None = None

    def prepare(self, model: nn.Module) -> nn.Module:
        """Wrap or freeze the model before any optimizer exists; return the model to train."""
        return model

    def is_prepared(self, model: nn.Module) -> bool:
        """Whether ``model`` (or the model a DDP / Accelerate wrapper holds as ``module``) is in
        the state :meth:`prepare` gives it. The hosts refuse to train a model for which this is
        False, since training it would silently be plain fine-tuning. Read from the model itself
        (a copy of a prepared model is prepared), never from a mark; True by default (a
        strategy whose ``prepare`` changes nothing, or whose task hooks redo it)."""
        return True

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        """A task begins (before its optimizer is built)."""

    def train_data(self, task: Task, model: nn.Module) -> Task:
        """The task to train on (replay strategies mix earlier examples in)."""
        return task

    def param_groups(self, model: nn.Module, lr: float) -> list[ParamGroup] | None:
        """Optimizer parameter groups, or None to leave the default (one group at ``lr``)."""
        return None

    def lr_scheduler(self, optimizer: Optimizer, num_training_steps: int) -> LRScheduler | None:
        """A learning-rate scheduler for ``optimizer``, or None for a constant rate."""
        return None

    def after_backward(self, model: nn.Module) -> None:
        """Gradients of the task loss exist (already clipped); transform them in place."""

    def on_step(self, step: int, model: nn.Module) -> None:
        """Optimizer step ``step`` (counted from 1 within the task) has been taken."""

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        """Epoch ``epoch`` (counted from 1 within the task) has ended."""

    def on_task_end(self, model: nn.Module, task: Task) -> None:
        """The task (its own data, without replayed examples) has been trained."""

    def route(self, model: nn.Module, task_name: str) -> None:
        """Send ``model``'s forward through ``task_name``'s own parts, if the strategy keeps any
        for that task (per-task adapters); a task it has not seen is left alone."""

    def record_fields(self, model: nn.Module, lr: float, logs: Sequence[TaskLog]) -> dict[str, Any]:
        """Fields this strategy adds to a run's results for the report, by results key (JSON
        values). ``logs`` are the run's per-task training logs (``steps``, ``epochs_done``)."""
        return {}

    def penalty(self, model: nn.Module) -> Tensor | None:
        """The regulariser in loss space (differentiable), or None if the strategy has none."""
        return None

    def state_dict(self) -> StateDict:
        """Everything needed to resume: tensors and JSON values under flat string keys."""
        return {}

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise RetainError(f"strategy {self.name!r} has no state but got keys {sorted(state)}")

    def describe(self) -> str:
        """``name(param=value, ...)`` for logs and reports."""
        params = inspect.signature(type(self)).parameters
        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in params if hasattr(self, k))
        return f"{self.name}({shown})"

    def __repr__(self) -> str:
        return self.describe()


def overrides(strategy: Strategy, hook: str) -> bool:
    """True when ``strategy``'s class implements ``hook`` itself (not the no-op default)."""
    return getattr(type(strategy), hook) is not getattr(Strategy, hook)


def parameters_line(cls: type[Strategy]) -> str:
    """The strategy's parameters with their defaults: ``"alpha=0.01, anchor='pretrained'"``."""
    shown = []
    for p in inspect.signature(cls).parameters.values():
        if p.name == "self":
            continue
        shown.append(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}")
    return ", ".join(shown)


def register_strategy(description: str, aliases: tuple[str, ...] = ()) -> Callable[[S], S]:
    """Class decorator: register a strategy under its ``name`` with a one-line description."""

    def decorate(cls: S) -> S:
        STRATEGIES.register(cls.name, cls, description, aliases)
        return cls

    return decorate


def build_strategy(name: str, **params: Any) -> Strategy:
    """The registered strategy ``name`` built with ``params``; unknown names and parameters fail
    with a did-you-mean message."""
    if not isinstance(name, str):
        raise RetainError(
            f"build_strategy takes the strategy name as a string, got {type(name).__name__}; "
            "for a {'name': ..., **params} entry use retain.chain(entry)"
        )
    cls = STRATEGIES.get(name)
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    for key in params:
        if key not in accepted:
            import difflib

            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RetainError(
                f"strategy {cls.name!r} has no parameter {key!r}{hint} "
                f"(it takes: {', '.join(accepted) or 'nothing'})"
            )
    return cls(**params)


def check_strength(strategy: str, parameter: str, value: float) -> float:
    """``value`` as a float, refusing negative or non-finite strengths."""
    value = float(value)
    if not value >= 0 or value == float("inf"):
        raise RetainError(
            f"{strategy} {parameter} must be a finite number >= 0, got {value}; "
            f"use 0 to switch the {strategy} term off"
        )
    return value


def conflict_reason(a: type[Strategy], b: type[Strategy]) -> str | None:
    """Why strategies ``a`` and ``b`` do not combine (either one's ``conflicts``), or None."""
    return a.conflicts.get(b.name) or b.conflicts.get(a.name)


def tunable_strategies() -> list[str]:
    """Registry names of the strategies whose strength a forgetting budget can tune."""
    return sorted(e.name for e in STRATEGIES if e.value.tunable_strength is not None)


def load_builtin_strategies() -> None:
    """Import the modules that register the built-in strategies (registration sits by the code)."""
    import retain.strategies.catalog  # noqa: F401
