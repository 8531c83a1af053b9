"""The plain PyTorch loop: one task, with strategies, the reference the Trainer callback matches.

Per optimizer step it computes the task loss (:func:`retain.data.task.batch_loss`), backpropagates,
clips the gradient norm when asked, calls ``after_backward`` (so penalty gradients are added after
clipping, exactly as in the Trainer), steps the optimizer and scheduler and calls ``on_step``.
With a :class:`~retain.training.monitor.ForgettingMonitor` it evaluates the watched
capabilities every ``eval_every`` steps and at the end, stops when forgetting exceeds the budget,
and restores the best within-budget weights *before* ``on_task_end``, so Fisher information,
anchors and replay buffers are computed on the weights the model keeps.
Gradient accumulation, mixed precision and data parallelism live in :mod:`retain.training.steps`;
task sequences, checkpoints and resume in :mod:`retain.training.sequence`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from retain.data.task import Task
from retain.distributed import rank_and_world
from retain.errors import RetainError
from retain.records.run import TaskLog
from retain.strategies.base import Strategy
from retain.strategies.chain import Chain, as_chain, record_made
from retain.training.divergence import DivergenceGuard, gradient_norm
from retain.training.monitor import ForgettingMonitor
from retain.training.optimizer_impl import OptimizerImpl, check_impl, impl_kwargs
from retain.training.steps import (
    Precision,
    StepRunner,
    check_precision,
    finite_or_raise,
)

__all__ = ["TaskHooks", "TaskLog", "TrainConfig", "make_optimizer", "train_task"]


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
        seed: seeds the data order (:func:`~retain.training.sequence.fit_sequence` also seeds
            everything else from it).
        shuffle: shuffle examples each epoch (False: dataset order, as Trainer's "sequential").
        grad_accum: micro-batches per optimizer step and process (the step still sees
            ``batch_size`` examples: :mod:`retain.training.steps`).
        precision: ``"fp32"``, ``"bf16"`` (autocast, CPU or CUDA) or ``"fp16"`` (CUDA, loss
            scaling).
        divergence_factor: stop the task with an error when the mean loss of the last 5 steps
            exceeds this many times the loss at the task's start (and 1 nat per target); None
            turns that rule off. Non-finite gradients always stop it (except under fp16, where
            the loss scaler skips such steps). The rule: :mod:`retain.training.divergence`.
        optimizer_impl: how the optimizer updates its tensors: ``"fused"`` (one kernel for all
            parameters), ``"foreach"`` (multi-tensor ops), ``"for_loop"`` (one parameter at a
            time, PyTorch's CPU default) or ``"auto"`` (fused where the parameters' device and
            dtype support it, else foreach: :func:`retain.training.optimizer_impl.choose_impl`).
            All give the same weights up to float rounding (~1e-6 relative).
    """

    lr: float = 1e-4
    batch_size: int = 16
    epochs: int = 1
    max_steps: int | None = None
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.0
    max_grad_norm: float | None = None
    seed: int = 0
    shuffle: bool = True
    grad_accum: int = 1
    precision: Precision = "fp32"
    divergence_factor: float | None = 10.0
    optimizer_impl: OptimizerImpl = "auto"

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise RetainError(f"learning rate must be > 0, got {self.lr}")
        if self.batch_size < 1 or self.epochs < 1:
            raise RetainError("batch_size and epochs must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise RetainError(
                f"max_steps must be >= 1 (or None for whole epochs), got {self.max_steps}"
            )
        if self.grad_accum < 1:
            raise RetainError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise RetainError(f"unknown precision {self.precision!r}; use 'fp32', 'bf16' or 'fp16'")
        if self.optimizer not in ("adamw", "sgd"):
            raise RetainError(f"unknown optimizer {self.optimizer!r}; use 'adamw' or 'sgd'")
        check_impl(self.optimizer_impl)
        factor = self.divergence_factor
        if factor is not None and not (isinstance(factor, (int, float)) and 1 < factor < math.inf):
            raise RetainError(
                f"divergence_factor must be a number > 1 (or None to turn the check off), "
                f"got {factor!r}"
            )


def make_optimizer(model: nn.Module, strategies: Strategy | None, config: TrainConfig) -> Optimizer:
    """The optimizer ``config`` names over the strategies' parameter groups.

    Without groups from a strategy, one group holds the trainable parameters (every parameter
    when a strategy unfreezes some later). Frozen parameters in a group are harmless: they get
    no gradient and the optimizer skips them. ``config.optimizer_impl`` picks the fused,
    foreach or for-loop update (:func:`~retain.training.optimizer_impl.impl_kwargs`). Pass the
    result to a ``Trainer`` as ``optimizers=(optimizer, None)``.
    """
    strategy = strategies if strategies is not None else Chain([])
    groups = strategy.param_groups(model, config.lr)
    if groups is None:
        every = strategy.needs_all_parameters_in_optimizer
        params = [p for p in model.parameters() if every or p.requires_grad]
        groups = [{"params": params}]
    # lists, so choosing the implementation does not use up a generator of parameters
    groups = [{**g, "params": _as_list(g["params"])} for g in groups]
    kwargs: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    kwargs.update(impl_kwargs(config.optimizer_impl, groups))
    optimizer: Optimizer
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, momentum=config.momentum, **kwargs)
    else:
        optimizer = torch.optim.AdamW(groups, **kwargs)
    record_made(optimizer)  # the Trainer callback checks it was passed on
    return optimizer


def _as_list(params: Any) -> list[Any]:
    return [params] if isinstance(params, torch.Tensor) else list(params)


@dataclass
class TaskHooks:
    """Engine hooks around :func:`train_task`; :func:`~retain.training.sequence.fit_sequence`
    uses them for checkpoints and resume.

    Attributes:
        resume: called once the optimizer and scheduler exist; loads the saved state (weights,
            optimizer, scheduler, strategies, monitor, RNG) and returns the log so far, whose
            ``steps`` are skipped (their data order is replayed without computing anything).
        after_step: called after every optimizer step (after ``on_step`` and the monitor check),
            e.g. to write a checkpoint.
        last_saved: ``last_saved(step)`` describes the newest complete checkpoint saved by task
            step ``step`` (0: the task's start) for error messages, e.g. ``"; the last good
            checkpoint is '...'"`` (``""``: none).
    """

    resume: Callable[[Optimizer, LRScheduler | None], TaskLog] | None = None
    after_step: Callable[[TaskLog, Optimizer, LRScheduler | None], None] | None = None
    last_saved: Callable[[int], str] = field(default=lambda _step: "")


def train_task(
    model: nn.Module,
    task: Task,
    strategies: Strategy | list[Strategy] | None = None,
    config: TrainConfig | None = None,
    monitor: ForgettingMonitor | None = None,
    *,
    progress: bool | None = None,
    hooks: TaskHooks | None = None,
) -> TaskLog:
    """Train ``model`` in place on ``task`` with ``strategies``; returns the per-step losses.

    Call ``strategies.prepare(model)`` once before the first task (it may wrap the model).
    Batches go to the model's device. One optimizer step takes ``config.batch_size`` examples
    (across all processes, in ``config.grad_accum`` micro-batches each; see
    :mod:`retain.training.steps`). ``monitor`` (one per task) is started before the first step,
    checked after every ``eval_every``-th optimizer step (after ``on_step``) and once at the end;
    when it says stop, training ends there. Its ``finish`` (restore the best weights) runs before
    ``on_task_end``. A NaN or infinite loss or gradient norm raises a :class:`RetainError` naming
    the step before the optimizer steps, so the weights (and the last checkpoint) are those of the
    last good step; so does a loss that rises ``config.divergence_factor`` times above its start
    (:mod:`retain.training.divergence`, which names the checkpoint from before the rise).
    ``progress``: a tqdm bar with loss, learning rate and the latest forgetting figure (None: only
    on a terminal, main process).
    """
    config = config or TrainConfig()
    hooks = hooks or TaskHooks()
    strat = as_chain(strategies)
    _check_batch(config, rank_and_world()[1])  # before begin_task changes any strategy state
    check_precision(config.precision, model)
    data = strat.begin_task(model, task)
    optimizer = make_optimizer(model, strat, config)
    runner = StepRunner(model, data, config.grad_accum, config.precision)
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
    log = (
        hooks.resume(optimizer, scheduler) if hooks.resume is not None else TaskLog(task=task.name)
    )
    done = log.steps  # steps already taken before a resume
    guard = DivergenceGuard(task.name, config.divergence_factor, hooks.last_saved)
    every = monitor.config.eval_every if monitor is not None else 0
    if monitor is not None and not monitor.started:
        monitor.start(model)
    bar = _progress_bar(task.name, total, done, progress, runner.rank)
    model.train()
    position = 0
    for epoch in range(1, config.epochs + 1):
        for indices in loader:
            position += 1
            if position > total:
                break
            if position <= done:
                continue  # replaying the data order of a resumed run
            loss = runner.backward(indices.tolist())
            finite_or_raise(loss, task.name, log.steps + 1, hooks.last_saved)
            runner.unscale(optimizer)
            if runner.scaler is None:  # under fp16 the scaler skips overflowing steps itself
                guard.gradients(gradient_norm(model, config.max_grad_norm), log.steps + 1)
            elif config.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            strat.after_backward(model)
            log.lrs.append(float(optimizer.param_groups[0]["lr"]))
            runner.step(optimizer)
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            log.losses.append(loss)
            guard.losses(log.losses)
            strat.on_step(log.steps, model)
            if monitor is not None and every and log.steps % every == 0:
                decision = monitor.check(model, log.steps)
                if decision.stop:
                    log.stopped, log.stop_reason = True, decision.reason
            _advance(bar, log, monitor)
            if hooks.after_step is not None:
                hooks.after_step(log, optimizer, scheduler)
            if log.stopped:
                break
        if epoch > log.epochs_done:
            strat.on_epoch_end(epoch, model)  # also after a stop mid-epoch, as the Trainer does
            log.epochs_done = epoch
        if log.stopped or position >= total:
            break
    if bar is not None:
        bar.close()
    if monitor is not None:
        latest = monitor.latest
        if latest is None or latest["step"] != log.steps:
            monitor.check(model, log.steps)
        log.monitor = monitor.finish(model)
    strat.on_task_end(model, task)
    return log


def _check_batch(config: TrainConfig, world_size: int) -> None:
    parts = world_size * config.grad_accum
    if config.batch_size < parts:
        raise RetainError(
            f"batch_size {config.batch_size} is smaller than {world_size} process(es) x "
            f"{config.grad_accum} accumulation step(s); raise batch_size to at least {parts}"
        )


def _progress_bar(
    name: str, total: int, done: int, show: bool | None, rank: int
) -> tqdm[Any] | None:
    if rank != 0 or show is False:
        return None
    return tqdm(
        total=total, initial=done, desc=name, unit="step", disable=None if show is None else False
    )


def _advance(bar: tqdm[Any] | None, log: TaskLog, monitor: ForgettingMonitor | None) -> None:
    if bar is None:
        return
    figures = {"loss": f"{log.losses[-1]:.4g}", "lr": f"{log.lrs[-1]:.2g}"}
    latest = monitor.latest if monitor is not None else None
    if latest is not None and latest["worst_degradation"] is not None:
        figures["forget"] = f"{latest['worst_degradation']:+.1%}"
    bar.set_postfix(figures, refresh=False)
    bar.update(1)
