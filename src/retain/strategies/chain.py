"""Compose strategies as an ordered list: every hook runs on each strategy in order."""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from retain.data.task import Task
from retain.distributed import refuse_sharded
from retain.errors import RetainError
from retain.records.run import TaskLog
from retain.strategies.base import (
    ParamGroup,
    StateDict,
    Strategy,
    build_strategy,
    conflict_reason,
)

__all__ = ["Chain", "as_chain", "chain", "made_by_retain", "record_made"]

#: Optimizers and schedulers built from strategies (``make_optimizer``, ``Chain.lr_scheduler``),
#: held weakly: the Trainer callback checks that the ones it is given are among them.
_MADE: weakref.WeakSet[Any] = weakref.WeakSet()


def record_made(obj: Any) -> None:
    """Remember ``obj`` (an optimizer or scheduler) as built from the strategies."""
    _MADE.add(obj)


def made_by_retain(obj: Any) -> bool:
    """Whether ``obj`` (or the optimizer or scheduler an Accelerate wrapper holds) was built from
    the strategies (:func:`record_made`)."""
    for candidate in (obj, getattr(obj, "optimizer", None), getattr(obj, "scheduler", None)):
        if candidate is not None:
            try:
                if candidate in _MADE:
                    return True
            except TypeError:  # not weak-referenceable: not one of ours
                continue
    return False


class Chain(Strategy):
    """Strategies applied in order; the chain is itself a strategy.

    * ``prepare``: each strategy wraps the model returned by the previous one.
    * ``train_data``: each strategy transforms the task returned by the previous one.
    * ``param_groups`` / ``lr_scheduler``: at most one strategy may provide them.
    * ``after_backward``: transforms apply in list order (``[ewc, agem]`` projects the
      EWC-regularised gradient).
    * ``state_dict``: keys are prefixed ``"<index>.<name>."``.
    """

    name = "chain"

    def __init__(self, strategies: Sequence[Strategy]) -> None:
        self.strategies = list(strategies)
        for i, a in enumerate(self.strategies):
            for b in self.strategies[i + 1 :]:
                if a.name == b.name:
                    raise RetainError(f"strategy {a.name!r} is listed twice; keep one")
                reason = conflict_reason(type(a), type(b))
                if reason:
                    raise RetainError(
                        f"strategies {a.name!r} and {b.name!r} do not combine: {reason}"
                    )

    def __iter__(self) -> Iterator[Strategy]:
        return iter(self.strategies)

    def __len__(self) -> int:
        return len(self.strategies)

    @property
    def needs_all_parameters_in_optimizer(self) -> bool:  # type: ignore[override]
        """True when any member unfreezes parameters during training."""
        return any(s.needs_all_parameters_in_optimizer for s in self.strategies)

    def prepare(self, model: nn.Module) -> nn.Module:
        for s in self.strategies:
            model = s.prepare(model)
        return model

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        for s in self.strategies:
            s.on_task_start(model, task)

    def train_data(self, task: Task, model: nn.Module) -> Task:
        for s in self.strategies:
            task = s.train_data(task, model)
        return task

    def begin_task(self, model: nn.Module, task: Task) -> Task:
        """``on_task_start`` then ``train_data``: once per task, before the optimizer is built.

        Refuses a model that skipped :meth:`prepare` when a member needs it (LoRA, freezing...),
        which would otherwise train as plain fine-tuning without a word, and an FSDP-sharded
        model when a member declares it :attr:`~retain.strategies.base.Strategy.unsharded_only`.
        """
        for s in self.strategies:
            if s.unsharded_only is not None:
                refuse_sharded(model, s.name, s.unsharded_only)
            if not s.is_prepared(model):
                raise RetainError(
                    f"strategy {s.name!r} changes the model before training, but prepare() did "
                    "not run on this model; call model = strategies.prepare(model) once first"
                )
        self.on_task_start(model, task)
        data = self.train_data(task, model)
        for s in self.strategies:
            s.begun_task = task.name
        return data

    def param_groups(self, model: nn.Module, lr: float) -> list[ParamGroup] | None:
        found = [(s, g) for s in self.strategies if (g := s.param_groups(model, lr)) is not None]
        if len(found) > 1:
            names = ", ".join(s.name for s, _ in found)
            raise RetainError(f"strategies {names} each set parameter groups; keep one of them")
        return found[0][1] if found else None

    def lr_scheduler(self, optimizer: Optimizer, num_training_steps: int) -> LRScheduler | None:
        found = [
            (s, sch)
            for s in self.strategies
            if (sch := s.lr_scheduler(optimizer, num_training_steps)) is not None
        ]
        if len(found) > 1:
            names = ", ".join(s.name for s, _ in found)
            raise RetainError(f"strategies {names} each set a learning-rate schedule; keep one")
        if not found:
            return None
        scheduler = found[0][1]
        record_made(scheduler)  # the Trainer callback checks it was passed on
        return scheduler

    def after_backward(self, model: nn.Module) -> None:
        for s in self.strategies:
            s.after_backward(model)

    def on_step(self, step: int, model: nn.Module) -> None:
        for s in self.strategies:
            s.on_step(step, model)

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        for s in self.strategies:
            s.on_epoch_end(epoch, model)

    def on_task_end(self, model: nn.Module, task: Task) -> None:
        for s in self.strategies:
            s.on_task_end(model, task)

    def route(self, model: nn.Module, task_name: str) -> None:
        for s in self.strategies:
            s.route(model, task_name)

    def record_fields(self, model: nn.Module, lr: float, logs: Sequence[TaskLog]) -> dict[str, Any]:
        """Every member's fields (a key given by two members is an error)."""
        fields: dict[str, Any] = {}
        for s in self.strategies:
            own = s.record_fields(model, lr, logs)
            twice = sorted(set(own) & set(fields))
            if twice:
                raise RetainError(f"two strategies give the results field {twice[0]!r}")
            fields.update(own)
        return fields

    def penalty(self, model: nn.Module) -> Tensor | None:
        terms = [p for s in self.strategies if (p := s.penalty(model)) is not None]
        return torch.stack(terms).sum() if terms else None

    def state_dict(self) -> StateDict:
        state: StateDict = {}
        for i, s in enumerate(self.strategies):
            for key, value in s.state_dict().items():
                state[f"{i}.{s.name}.{key}"] = value
        return state

    def load_state_dict(self, state: StateDict) -> None:
        saved = {tuple(k.split(".", 2)[:2]) for k in state if k.count(".") >= 2}
        ours = {(str(i), s.name) for i, s in enumerate(self.strategies)}
        if saved and not saved <= ours:
            order = [
                name for _, name in sorted(saved, key=lambda p: int(p[0]) if p[0].isdigit() else -1)
            ]
            raise RetainError(
                f"strategy state was saved from strategies in the order {order}, which is not "
                f"this chain's {[s.name for s in self.strategies]}; list them as when it was saved"
            )
        for i, s in enumerate(self.strategies):
            prefix = f"{i}.{s.name}."
            own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            s.load_state_dict(own)
        known = tuple(f"{i}.{s.name}." for i, s in enumerate(self.strategies))
        stray = [k for k in state if not k.startswith(known)]
        if stray:
            raise RetainError(
                f"strategy state has keys for strategies not in this chain ({stray[0]!r}, ...); "
                "load it into the same list of strategies it was saved from"
            )

    def describe(self) -> str:
        return "[" + ", ".join(s.describe() for s in self.strategies) + "]"


def chain(*strategies: Strategy | str | dict[str, Any] | Sequence[Strategy]) -> Chain:
    """A :class:`Chain` from strategy objects, registry names, or ``{"name": ..., **params}``.

    >>> chain().strategies
    []
    """
    flat: list[Strategy] = []
    for item in strategies:
        if isinstance(item, Strategy):
            flat.extend(item.strategies if isinstance(item, Chain) else [item])
        elif isinstance(item, str):
            flat.append(build_strategy(item))
        elif isinstance(item, dict):
            params = dict(item)
            if "name" not in params:
                raise RetainError(f"strategy entry {item!r} has no 'name'; add name: <strategy>")
            flat.append(build_strategy(params.pop("name"), **params))
        else:
            flat.extend(chain(*item).strategies)
    return Chain(flat)


def as_chain(strategies: Strategy | Sequence[Strategy] | None) -> Chain:
    """``strategies`` as a :class:`Chain` (None: the empty chain; a chain: itself)."""
    if strategies is None:
        return Chain([])
    if isinstance(strategies, Chain):
        return strategies
    if isinstance(strategies, Strategy):
        return Chain([strategies])
    return chain(*strategies)
