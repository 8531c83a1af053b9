"""Strategies inside any Hugging Face ``Trainer`` (TRL's included), through public callback events.

Per task::

    strategies = retain.chain("ewc", ...)
    model = strategies.prepare(model)                    # once, before any optimizer
    data = strategies.begin_task(model, task)            # anchors, adapters, replay mix
    trainer = Trainer(
        model=model, args=args, train_dataset=data.examples, data_collator=data.collate,
        optimizers=(make_optimizer(model, strategies, config), None),  # layer-wise lr, unfreezing
        callbacks=[RetainCallback(strategies, task)],
    )
    trainer.train()                                      # on_task_end runs at the end

Event mapping: ``on_pre_optimizer_step`` -> ``after_backward``, ``on_step_end`` -> ``on_step``,
``on_epoch_end`` -> ``on_epoch_end``, ``on_train_end`` -> ``on_task_end``.

Caveats:

* ``on_pre_optimizer_step`` runs after the Trainer clips gradients (``max_grad_norm``), so penalty
  gradients are not clipped. The plain loop does the same, so both hosts agree.
* With fp16 loss scaling the Trainer unscales before clipping; the callback sees unscaled
  gradients, as the penalty formulas assume. With DeepSpeed, whose engine owns the step,
  ``on_pre_optimizer_step`` is not a place to edit gradients: use the plain loop.
* A Trainer builds its optimizer from parameters that require grad at construction time. A
  strategy that unfreezes parameters later needs ``optimizers=(make_optimizer(...), None)``; the
  callback checks this at ``on_train_begin``.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from retain.data.task import Task
from retain.errors import RetainError
from retain.strategies.base import Strategy
from retain.strategies.chain import Chain

__all__ = ["RetainCallback"]


class RetainCallback(TrainerCallback):
    """Calls the strategy hooks from ``Trainer`` events; ``task`` gets ``on_task_end`` at the end.

    ``task`` is the task's own data (not the replay mix), as in the plain loop.
    """

    def __init__(self, strategies: Strategy, task: Task | None = None) -> None:
        self.strategies = strategies if isinstance(strategies, Chain) else Chain([strategies])
        self.task = task
        self._first_step = 0

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        """Remember where this task's steps start; check the optimizer holds every parameter
        when a strategy will unfreeze some."""
        self._first_step = state.global_step
        if self.strategies.needs_all_parameters_in_optimizer and optimizer is not None and model:
            held = {id(p) for g in optimizer.param_groups for p in g["params"]}
            missing = [n for n, p in model.named_parameters() if id(p) not in held]
            if missing:
                raise RetainError(
                    f"the Trainer's optimizer lacks {len(missing)} frozen parameters "
                    f"({missing[0]!r}, ...) that a strategy unfreezes later; pass "
                    "optimizers=(make_optimizer(model, strategies, config), None) "
                    "(from retain.training.loop)"
                )

    def on_pre_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Gradients are accumulated and clipped: apply the strategies' gradient transforms."""
        self.strategies.after_backward(_required(model))

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """An optimizer step was taken."""
        self.strategies.on_step(state.global_step - self._first_step, _required(model))

    def on_epoch_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """An epoch ended (``state.epoch`` is a float; it is whole here)."""
        self.strategies.on_epoch_end(round(state.epoch or 0), _required(model))

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Training of the task ended: Fisher estimation, buffer filling, anchor updates."""
        if self.task is not None:
            self.strategies.on_task_end(_required(model), self.task)


def _required(model: nn.Module | None) -> nn.Module:
    if model is None:  # the Trainer always passes its model; a custom host might not
        raise RetainError("RetainCallback needs the model in callback events; use a Trainer")
    return model
