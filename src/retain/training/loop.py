"""The plain PyTorch loop: one task, with strategies, the reference the Trainer callback matches.

Per optimizer step it computes the task loss (:func:`retain.data.task.batch_loss`), backpropagates,
clips the gradient norm when asked, calls ``after_backward`` (so penalty gradients are added after
clipping, exactly as in the Trainer), steps the optimizer and scheduler and calls ``on_step``.
With a :class:`~retain.training.monitor.ForgettingMonitor` it evaluates the watched
capabilities every ``eval_every`` steps and at the end, stops when forgetting exceeds the budget,
and restores the best within-budget weights *before* ``on_task_end``, so Fisher information,
anchors and replay buffers are computed on the weights the model keeps.
The full engine (task sequences, Accelerate, checkpoints) builds on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from retain.data.task import Task, batch_loss
from retain.errors import RetainError
from retain.strategies.base import Strategy
from retain.strategies.chain import MADE_MARK, Chain, as_chain
from retain.training.monitor import ForgettingMonitor, MonitorResult

__all__ = ["TaskLog", "TrainConfig", "make_optimizer", "train_task"]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one task's training.

    Attributes:
        lr: base learning rate.
        batch_size: examples per optimizer step.
        epochs: passes over the task data (``max_steps`` stops earlier when set).
        max_steps: stop after this many optimizer steps.
        optimizer: ``"adamw"`` or ``"sgd"``.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        momentum: SGD momentum.
        max_grad_norm: clip the global gradient norm to this value (None: no clipping).
        seed: seeds the data order.
        shuffle: shuffle examples each epoch (False: dataset order, as Trainer's "sequential").
    """

    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 1
    max_steps: int | None = None
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.0
    max_grad_norm: float | None = None
    seed: int = 0
    shuffle: bool = True

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise RetainError(f"learning rate must be > 0, got {self.lr}")
        if self.batch_size < 1 or self.epochs < 1:
            raise RetainError("batch_size and epochs must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise RetainError(
                f"max_steps must be >= 1 (or None for whole epochs), got {self.max_steps}"
            )
        if self.optimizer not in ("adamw", "sgd"):
            raise RetainError(f"unknown optimizer {self.optimizer!r}; use 'adamw' or 'sgd'")


@dataclass
class TaskLog:
    """What happened while training one task: the loss of every optimizer step.

    ``stopped``/``stop_reason``: the forgetting monitor cut training short, and why; ``monitor``:
    its :class:`~retain.training.monitor.MonitorResult` (None without a monitor).
    """

    task: str
    losses: list[float] = field(default_factory=list)
    stopped: bool = False
    stop_reason: str = ""
    monitor: MonitorResult | None = None

    @property
    def steps(self) -> int:
        """Optimizer steps taken."""
        return len(self.losses)


def make_optimizer(model: nn.Module, strategies: Strategy | None, config: TrainConfig) -> Optimizer:
    """The optimizer ``config`` names over the strategies' parameter groups.

    Without groups from a strategy, one group holds the trainable parameters (every parameter
    when a strategy unfreezes some later). Frozen parameters in a group are harmless: they get
    no gradient and the optimizer skips them. Pass the result to a ``Trainer`` as
    ``optimizers=(optimizer, None)``.
    """
    strategy = strategies if strategies is not None else Chain([])
    groups = strategy.param_groups(model, config.lr)
    if groups is None:
        every = strategy.needs_all_parameters_in_optimizer
        params = [p for p in model.parameters() if every or p.requires_grad]
        groups = [{"params": params}]
    kwargs: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    optimizer: Optimizer
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, momentum=config.momentum, **kwargs)
    else:
        optimizer = torch.optim.AdamW(groups, **kwargs)
    optimizer.__dict__[MADE_MARK] = True  # the Trainer callback checks it was passed on
    return optimizer


def train_task(
    model: nn.Module,
    task: Task,
    strategies: Strategy | list[Strategy] | None = None,
    config: TrainConfig | None = None,
    monitor: ForgettingMonitor | None = None,
) -> TaskLog:
    """Train ``model`` in place on ``task`` with ``strategies``; returns the per-step losses.

    Call ``strategies.prepare(model)`` once before the first task (it may wrap the model).
    ``monitor`` (one per task) is started before the first step, checked after every
    ``eval_every``-th optimizer step (after ``on_step``) and once at the end; when it says stop,
    training ends there. Its ``finish`` (restore the best weights) runs before ``on_task_end``.
    """
    config = config or TrainConfig()
    strat = as_chain(strategies)
    data = strat.begin_task(model, task)
    optimizer = make_optimizer(model, strat, config)
    generator = torch.Generator().manual_seed(config.seed)
    loader: DataLoader[int] = DataLoader(
        range(len(data.examples)),  # type: ignore[arg-type]  # any sized indexable works
        batch_size=config.batch_size,
        shuffle=config.shuffle,
        generator=generator,
    )
    total = len(loader) * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    scheduler = strat.lr_scheduler(optimizer, total)
    log = TaskLog(task.name)
    every = monitor.config.eval_every if monitor is not None else 0
    checked = -1  # the step of the latest check
    if monitor is not None and not monitor.started:
        monitor.start(model)
    model.train()
    for epoch in range(1, config.epochs + 1):
        for indices in loader:
            if log.steps >= total:
                break
            batch = data.collate([data.examples[int(i)] for i in indices])
            loss = batch_loss(data.objective, model, batch)
            if not math.isfinite(loss.item()):
                raise RetainError(
                    f"task {task.name!r}: loss is {loss.item()} at step {log.steps + 1}; "
                    "lower the learning rate or check the data"
                )
            loss.backward()  # type: ignore[no-untyped-call]
            if config.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            strat.after_backward(model)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            log.losses.append(float(loss.item()))
            strat.on_step(log.steps, model)
            if monitor is not None and every and log.steps % every == 0:
                checked = log.steps
                decision = monitor.check(model, log.steps)
                if decision.stop:
                    log.stopped, log.stop_reason = True, decision.reason
                    break
        strat.on_epoch_end(epoch, model)  # also after a stop mid-epoch, as the Trainer does
        if log.stopped or log.steps >= total:
            break
    if monitor is not None:
        if checked != log.steps:
            monitor.check(model, log.steps)
        log.monitor = monitor.finish(model)
    strat.on_task_end(model, task)
    return log
