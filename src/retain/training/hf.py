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
``on_epoch_end`` -> ``on_epoch_end``, ``on_train_end`` -> ``on_task_end``. The hooks get the
model the Trainer passes, without a ``torch.compile`` or DDP wrapper (FSDP2 shards in place).

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

FSDP2 (``torch.distributed.fsdp.fully_shard``), launched with ``torchrun --nproc-per-node N`` or
``accelerate launch --num-processes N``: shard the model *before* ``begin_task``, so that L2-SP's
anchor and EWC's Fisher are taken as this process's shards (:mod:`retain.strategies.anchored`),
and build the optimizer on the sharded parameters. With Transformers' own FSDP2 the model is
sharded as it loads, on GPUs and on CPUs (gloo)::

    world = int(os.environ.get("WORLD_SIZE", 1))
    sharding = DistributedConfig(fsdp_size=world) if world > 1 else None  # transformers.distributed
    model = AutoModelForCausalLM.from_pretrained(name, distributed_config=sharding)
    model = strategies.prepare(model)
    data = strategies.begin_task(model, task)            # shards of anchors, Fisher
    optimizer = make_optimizer(model, strategies, config)  # foreach on sharded DTensors
    args = TrainingArguments(..., per_device_train_batch_size=global_batch // world // accum,
                             gradient_accumulation_steps=accum)   # no fsdp arguments

The Trainer leaves such a model as it is (no DDP, no second sharding), accepts
``optimizers=(...)``, and passes the sharded model to the callbacks. FSDP2 reduce-scatters the
gradients in the backward of the last micro-batch of an accumulation window; the Trainer then
clips them by their global norm, and ``on_pre_optimizer_step`` applies the strategies'
transforms to the local shards of ``.grad``, after clipping as in the unsharded case.

Accelerate's FSDP2 (``TrainingArguments(fsdp=True, fsdp_config={"version": 2, ...})``, or
``accelerate launch`` with an FSDP2 config file) shards a model passed whole inside
``train()``, after ``begin_task``, which the callback refuses. It works when the model is
sharded first (``fully_shard`` on each block, then on the root; Accelerate keeps a model that is
already FSDP2). Then leave ``transformer_layer_cls_to_wrap`` out (Accelerate 1.16 looks the
class up by name, and ``fully_shard`` renamed it to ``FSDP<Name>``), and, since the Trainer
refuses ``optimizers=(...)`` under FSDP, return ``make_optimizer(self.model, strategies,
config)`` from ``create_optimizer`` in a ``Trainer`` subclass (and the strategies' scheduler from
``create_scheduler``) where a strategy needs them.

Refused at ``on_train_begin``, each with one line: a model wrapped with FSDP1
(``FullyShardedDataParallel``, whose flat parameters the strategies cannot read); a strategy that
declares :attr:`~retain.strategies.base.Strategy.unsharded_only` (with its reason); and a model
that the Trainer itself sharded after ``begin_task``, since the strategies' state was then
taken from whole weights. This last check needs the callback at the Trainer's construction
(``callbacks=[...]``, where ``on_init_end`` sees the model as given); added later, the strategies
fail at the first step instead. On CPUs, Accelerate 1.16 enables FSDP only for GPUs and other
accelerators: with ``use_cpu=True`` it ignores ``fsdp`` and the Trainer trains with DDP; the
callback warns then.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from retain.data.task import Task
from retain.distributed import is_main_process, is_sharded, refuse_sharded
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
        self._sharded_at_init: bool | None = None  # None: on_init_end did not run

    def on_init_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Note whether the Trainer was given the model sharded (FSDP2) or whole: a Trainer that
        shards it itself does so in ``train()``, after ``begin_task`` (refused at the start)."""
        if model is not None:
            self._sharded_at_init = is_sharded(_unwrap(model))

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
        own schedule where a strategy sets one. Sharded set-ups that cannot work are refused
        first (:meth:`_check_sharding`)."""
        self._first_step = state.global_step
        members = self.strategies.strategies
        begun = [s.name for s in members if s.begun_task != self.task.name]
        if begun:
            raise RetainError(
                f"strategies.begin_task(model, task) was not called for task {self.task.name!r} "
                f"({begun[0]!r} has not begun it); call it and train on the data it returns"
            )
        self._check_sharding(args, _required(model))
        # under Accelerate's FSDP the Trainer refuses optimizers=(...): build them in a subclass
        where = (
            "return them from create_optimizer / create_scheduler of a Trainer subclass (the "
            "Trainer refuses optimizers=(...) under FSDP)"
            if getattr(args, "fsdp", None)
            else "pass optimizers=(optimizer, scheduler) to the Trainer"
        )
        wants_optimizer = [
            s.name
            for s in members
            if overrides(s, "param_groups") or s.needs_all_parameters_in_optimizer
        ]
        if wants_optimizer and not made_by_retain(optimizer):
            raise RetainError(
                f"strategy {wants_optimizer[0]!r} needs the optimizer built from the strategies, "
                f"make_optimizer(model, strategies, config) (from retain.training.loop); {where}"
            )
        if any(overrides(s, "lr_scheduler") for s in members) and not made_by_retain(lr_scheduler):
            raise RetainError(
                "a strategy sets the learning-rate schedule, but the Trainer uses its own; build "
                f"it with strategies.lr_scheduler(optimizer, num_training_steps) and {where}"
            )
        if self.monitor is not None and not self.monitor.started:
            self.monitor.start(_required(model))

    def _check_sharding(self, args: TrainingArguments, model: nn.Module) -> None:
        """Refuse FSDP1, a member that declares ``unsharded_only`` on a sharded model, and a model
        the Trainer sharded after ``begin_task``; warn when ``args.fsdp`` left the model whole."""
        if _has_fsdp1(model):
            raise RetainError(
                "the model is wrapped with FSDP1 (FullyShardedDataParallel), whose flattened "
                "parameters retain's strategies cannot read; use FSDP2: "
                "fsdp_config={'fsdp_version': 2} or fully_shard"
            )
        if not is_sharded(model):
            if getattr(args, "fsdp", None) and is_main_process():
                warnings.warn(
                    "TrainingArguments ask for FSDP but the model is not sharded: Accelerate "
                    "enables FSDP on GPUs and other accelerators only, so on CPUs the Trainer "
                    "trains with DDP (whole weights on every process); to shard on CPUs, load "
                    "the model with from_pretrained(..., distributed_config="
                    "DistributedConfig(fsdp_size=N))",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return
        members = self.strategies.strategies
        for s in members:
            if s.unsharded_only is not None:
                refuse_sharded(model, s.name, s.unsharded_only)
        if members and self._sharded_at_init is False:
            raise RetainError(
                "the Trainer sharded the model (FSDP2) after strategies.begin_task took the "
                "strategies' state from its whole weights; shard it before begin_task (load it "
                "with from_pretrained(..., distributed_config=DistributedConfig(fsdp_size=N)), or "
                "fully_shard each block and the root), then make_optimizer and build the Trainer"
            )

    def on_pre_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Gradients are accumulated, reduced (under FSDP2: reduce-scattered into this process's
        shards) and clipped: apply the strategies' gradient transforms."""
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
    """The module the strategies work on (:func:`_unwrap`) of the model the Trainer passes."""
    if model is None:  # the Trainer always passes its model; a custom host might not
        raise RetainError("RetainCallback needs the model in callback events; use a Trainer")
    return _unwrap(model)


def _unwrap(model: nn.Module) -> nn.Module:
    """``model`` without the wrappers whose parameter names differ from the module's: a
    ``torch.compile`` wrapper (``_orig_mod.``, which the Trainer passes under FSDP with
    ``torch_compile``) and ``DistributedDataParallel`` / ``DataParallel`` (``module.``). FSDP2
    shards a module in place, so a sharded model is returned as it is: the hooks then see its
    ``DTensor`` parameters and gradients and work on their local shards."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module) and isinstance(
            model, (nn.parallel.DistributedDataParallel, nn.DataParallel)
        ):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _has_fsdp1(model: nn.Module) -> bool:
    """Whether ``model`` or a submodule is an FSDP1 ``FullyShardedDataParallel`` wrapper."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FullyShardedDataParallel

    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())
