"""Strategies inside any Hugging Face ``Trainer`` (TRL's included), through public callback events.

Per task::

    strategies = retain.chain("ewc", ...)
    model = strategies.prepare(model)                    # once, before any optimizer
    data = strategies.begin_task(model, task)            # anchors, adapters, replay mix
    optimizer = make_optimizer(model, strategies, config)           # layer-wise lr groups
    scheduler = strategies.lr_scheduler(optimizer, num_training_steps)  # warmup, or None
    trainer = Trainer(
        model=model, args=args, train_dataset=data.examples, data_collator=data.collate,
        optimizers=(optimizer, scheduler),
        callbacks=[RetainCallback(strategies, task)],
    )
    trainer.train()                                      # on_task_end runs at the end

With ``scheduler`` None the Trainer applies its own (``args.lr_scheduler_type``, linear decay by
default). The plain loop and the Trainer give the same weights when their settings match:
``lr_scheduler_type="constant"`` (or the strategies' scheduler), ``max_grad_norm`` equal to
``TrainConfig.max_grad_norm`` (0 disables clipping in the Trainer), and the same data order
(``train_sampling_strategy="sequential"`` with ``TrainConfig(shuffle=False)``).

With ``monitor=ForgettingMonitor(...)`` the callback starts it at ``on_train_begin``, checks it
every ``eval_every`` steps and at the last step (``on_step_end``, asking the Trainer to log there),
sets ``control.should_training_stop`` when it says stop, and at ``on_train_end`` restores the best
within-budget weights before ``on_task_end``. The figures (``monitor/<capability>/degradation``,
``monitor/worst_degradation``, ``monitor/task_score``, ``monitor/within_budget``) are added to the
``logs`` dict of the next ``on_log`` and to ``state.log_history``. The Trainer calls the reporting
integrations of ``report_to`` *before* the callbacks passed to it, so to send the figures to
TensorBoard or W&B pass the integration after this callback instead::

    args = TrainingArguments(..., report_to="none")
    callbacks = [RetainCallback(strategies, task, monitor), TensorBoardCallback()]

Event mapping: ``on_pre_optimizer_step`` -> ``after_backward``, ``on_step_end`` -> ``on_step``,
``on_epoch_end`` -> ``on_epoch_end``, ``on_train_end`` -> ``on_task_end``.

Caveats:

* ``on_pre_optimizer_step`` runs after the Trainer clips gradients (``max_grad_norm``), so penalty
  gradients are not clipped. The plain loop does the same, so both hosts agree.
* With fp16 loss scaling the Trainer unscales before clipping; the callback sees unscaled
  gradients, as the penalty formulas assume. With DeepSpeed, whose engine owns the step,
  ``on_pre_optimizer_step`` is not a place to edit gradients: use the plain loop.
* A Trainer builds its optimizer from parameters that require grad at construction time, in its
  own groups. A strategy that sets parameter groups (``layerwise_lr``) or unfreezes parameters
  later (``gradual_unfreezing``) needs ``make_optimizer``, and one that sets the schedule
  (``warmup``) needs its scheduler passed; the callback refuses, at ``on_train_begin``, a set-up
  that would silently ignore them, and one where ``begin_task`` was not called for the task.
* The plain loop's divergence checks (non-finite gradient norm, ``TrainConfig.divergence_factor``:
  :mod:`retain.training.divergence`) are not applied here: the callback sees neither the gradient
  norm before clipping nor the loss of every step, and a Trainer does not stop on a NaN loss. Watch
  ``grad_norm`` and ``loss`` in the Trainer's logs, or train with the plain loop.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from retain.data.task import Task
from retain.errors import RetainError
from retain.strategies.base import Strategy, overrides
from retain.strategies.chain import Chain, made_by_retain
from retain.training.monitor import ForgettingMonitor, MonitorResult

__all__ = ["RetainCallback"]


class RetainCallback(TrainerCallback):
    """Calls the strategy hooks from ``Trainer`` events; ``task`` gets ``on_task_end`` at the end.

    ``task`` is the task's own data (not the replay mix), as in the plain loop. ``monitor`` (one
    per task) watches forgetting; its result is ``self.result`` after training.
    """

    def __init__(
        self, strategies: Strategy, task: Task, monitor: ForgettingMonitor | None = None
    ) -> None:
        self.strategies = strategies if isinstance(strategies, Chain) else Chain([strategies])
        self.task = task
        self.monitor = monitor
        self.result: MonitorResult | None = None
        self._first_step = 0
        self._checked = -1  # the task step of the latest check
        self._unlogged = False  # a check whose figures were not logged yet

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        """Remember where this task's steps start, and refuse set-ups in which a strategy would
        silently do nothing: ``begin_task`` not called for this task, the Trainer's own optimizer
        where a strategy sets parameter groups or unfreezes parameters later, or the Trainer's
        own schedule where a strategy sets one."""
        self._first_step = state.global_step
        members = self.strategies.strategies
        begun = [s.name for s in members if s.begun_task != self.task.name]
        if begun:
            raise RetainError(
                f"strategies.begin_task(model, task) was not called for task {self.task.name!r} "
                f"({begun[0]!r} has not begun it); call it and train on the data it returns"
            )
        wants_optimizer = [
            s.name
            for s in members
            if overrides(s, "param_groups") or s.needs_all_parameters_in_optimizer
        ]
        if wants_optimizer and not made_by_retain(optimizer):
            raise RetainError(
                f"strategy {wants_optimizer[0]!r} needs the optimizer built from the strategies; "
                "pass optimizers=(make_optimizer(model, strategies, config), scheduler) "
                "(from retain.training.loop) to the Trainer"
            )
        if any(overrides(s, "lr_scheduler") for s in members) and not made_by_retain(lr_scheduler):
            raise RetainError(
                "a strategy sets the learning-rate schedule, but the Trainer uses its own; pass "
                "optimizers=(optimizer, strategies.lr_scheduler(optimizer, num_training_steps))"
            )
        if self.monitor is not None and not self.monitor.started:
            self.monitor.start(_required(model))

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
        """An optimizer step was taken: strategies' ``on_step``, then the monitor's check."""
        step = state.global_step - self._first_step
        self.strategies.on_step(step, _required(model))
        if self.monitor is None:
            return
        every = self.monitor.config.eval_every
        if (every and step % every == 0) or state.global_step >= state.max_steps:
            self._checked, self._unlogged = step, True
            control.should_log = True
            if self.monitor.check(_required(model), step).stop:
                control.should_training_stop = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the latest monitor figures to ``logs`` and ``state.log_history`` (once each)."""
        if self.monitor is None or not self._unlogged or logs is None:
            return
        figures = self.monitor.figures()
        logs.update(figures)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(figures)
        self._unlogged = False

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
        """Training of the task ended: the monitor restores the best weights (after a last check
        if the final step was not checked), then Fisher estimation, buffer filling, anchors."""
        if self.monitor is not None:
            step = state.global_step - self._first_step
            if self._checked != step:
                self.monitor.check(_required(model), step)
            self.result = self.monitor.finish(_required(model))
        self.strategies.on_task_end(_required(model), self.task)


def _required(model: nn.Module | None) -> nn.Module:
    if model is None:  # the Trainer always passes its model; a custom host might not
        raise RetainError("RetainCallback needs the model in callback events; use a Trainer")
    return model
