"""Gradual unfreezing: train the head first, then unfreeze one more block at a time from the top.

Howard & Ruder (2018, ULMFiT, section 3.2) unfreeze the last layer first and one more layer per
epoch, so the randomly initialised head adapts before it sends large gradients into pretrained
blocks. With depths from :func:`retain.strategies.block_stack.detect_block_stack` (``L`` blocks,
head at depth ``L``, embeddings at -1), after ``u`` units (optimizer steps or epochs)

    k = min(u // every, L + 1)      depths L, L-1, ..., L-k are trainable

so blocks ``L-1 .. L-k`` follow the head, and the embeddings come last, after ``(L + 1) * every``
units. The schedule restarts with every task (``on_task_start`` freezes everything below the
head again), as each task is a new fine-tuning.

Only parameters that required gradients when :meth:`GradualUnfreezing.prepare` ran are ever
unfrozen: weights frozen before (by ``freeze``, or the base weights of a PEFT model) stay frozen.
List this strategy *after* strategies that wrap or freeze the model
(``[lora, gradual_unfreezing]``); the other order is refused at the first task. Parameters the
model gains after ``prepare`` are left as they are.

The optimizer must hold the frozen parameters from the start
(``needs_all_parameters_in_optimizer``): :func:`retain.training.loop.make_optimizer` does so, and
the ``Trainer`` callback checks it.

Distributed: ``DistributedDataParallel`` all-reduces only the parameters that required gradients
when it wrapped the model, so a parameter unfrozen later would silently drift apart across ranks.
When ``torch.distributed`` is initialised (do it before ``prepare``), "frozen" therefore means
that the parameter keeps ``requires_grad=True`` and ``after_backward`` drops its gradient
(``grad = None``, so the optimizer leaves it bitwise unchanged); the backward pass then costs as
much as full fine-tuning, but every rank stays identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from retain.data.task import Task
from retain.errors import RetainError
from retain.records.run import TaskLog
from retain.strategies.base import StateDict, Strategy, register_strategy
from retain.strategies.block_stack import BlockStack, detect_block_stack

__all__ = ["GradualUnfreezing"]

_STATE_KEYS = {"units", "in_task", "timelines", "trainable"}


@register_strategy("gradual unfreezing: train the head, then unfreeze one block at a time (ULMFiT)")
class GradualUnfreezing(Strategy):
    """Freeze all but the head, then unfreeze blocks ``L-1, L-2, ..., 0`` and finally the
    embeddings, one more every ``every`` units (Howard & Ruder 2018, ULMFiT).

    Args:
        every: units between two unfreezings (ULMFiT: 1 epoch).
        unit: ``"step"`` counts optimizer steps (``on_step``), ``"epoch"`` counts epochs
            (``on_epoch_end``).
        pattern: regex whose group 1 is the block index, when automatic detection of the block
            ``nn.ModuleList`` does not fit the model.
        start: where unfreezing starts; only ``"head"`` (top down, as in ULMFiT).

    ``timeline`` lists ``(unit, depth)`` for the current task: when each depth became trainable
    (the head at unit 0); ``timelines`` holds one such list per task started.
    """

    name = "gradual_unfreezing"
    unsharded_only = "it changes requires_grad of sharded parameters"
    needs_all_parameters_in_optimizer: ClassVar[bool] = True

    def __init__(
        self,
        every: int = 1,
        unit: Literal["step", "epoch"] = "step",
        pattern: str | None = None,
        start: Literal["head"] = "head",
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise RetainError(
                f"gradual_unfreezing every must be a whole number >= 1, got {every!r}"
            )
        if unit not in ("step", "epoch"):
            raise RetainError(f"gradual_unfreezing unit must be 'step' or 'epoch', got {unit!r}")
        if start != "head":
            raise RetainError(
                f"gradual_unfreezing start must be 'head' (unfreeze from the top), got {start!r}"
            )
        self.every = every
        self.unit: Literal["step", "epoch"] = unit
        self.pattern = pattern
        self.start: Literal["head"] = start
        self.units = 0
        self.timelines: list[list[tuple[int, int]]] = []
        self._trainable: set[str] | None = None  # names trainable before prepare
        self._known: set[str] = set()  # every name the model had at prepare
        self._stack: BlockStack | None = None
        self._in_task = False
        self._pending = False  # a loaded state waits to be applied to the model
        self._held: set[str] = set()  # distributed: frozen by the schedule, gradients dropped

    # ----------------------------------------------------------------------------- schedule
    @property
    def timeline(self) -> list[tuple[int, int]]:
        """``(unit, depth)`` pairs of the current (or last) task, in unfreezing order."""
        return self.timelines[-1] if self.timelines else []

    @property
    def unfrozen_depths(self) -> list[int]:
        """Depths trainable now, head first (``[L, L-1, ...]``); empty before ``prepare``."""
        if self._stack is None:
            return []
        head = self._stack.head
        return list(range(head, self._target(head) - 1, -1))

    def _target(self, num_blocks: int) -> int:
        """The lowest trainable depth after ``self.units`` units."""
        k = min(self.units // self.every, num_blocks + 1)
        return num_blocks - k

    # -------------------------------------------------------------------------------- hooks
    def prepare(self, model: nn.Module) -> nn.Module:
        """Record which parameters are trainable, then freeze everything below the head
        (or, after :meth:`load_state_dict`, below the depth the loaded schedule reached)."""
        inner = _unwrap(model)
        if self._pending:  # resuming: keep the loaded schedule and list of trainable names
            self._known = {n for n, _ in inner.named_parameters()}
        else:
            self._record(inner)
            self.units = 0
            self._in_task = False
        self._set_flags(inner, self._stack_of(inner))
        return model

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        """Restart the schedule (head only), or apply a state loaded in the middle of a task."""
        inner = _unwrap(model)
        if self._trainable is None:
            self._record(inner)
        if self._pending and self._in_task:
            self._apply(inner)
        else:
            self._begin(inner)
        self._in_task = True

    def after_backward(self, model: nn.Module) -> None:
        """Distributed only: drop the gradients of parameters the schedule holds frozen."""
        if self._held:
            for name, param in _unwrap(model).named_parameters():
                if name in self._held:
                    param.grad = None

    def on_step(self, step: int, model: nn.Module) -> None:
        """One more optimizer step (``unit="step"``): unfreeze the next depth when it is due."""
        if self.unit == "step":
            self._advance(_unwrap(model))
        elif self._pending:
            self._apply(_unwrap(model))

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        """One more epoch (``unit="epoch"``): unfreeze the next depth when it is due."""
        if self.unit == "epoch":
            self._advance(_unwrap(model))
        elif self._pending:
            self._apply(_unwrap(model))

    def on_task_end(self, model: nn.Module, task: Task) -> None:
        """The task is over; the next ``on_task_start`` restarts the schedule."""
        self._in_task = False

    # -------------------------------------------------------------------------------- state
    def record_fields(self, model: nn.Module, lr: float, logs: Sequence[TaskLog]) -> dict[str, Any]:
        """``unfreezing``: per task, ``[[optimizer step, blocks unfrozen], ...]`` (epochs are
        converted with the task's steps per epoch, ``steps / epochs_done`` of its log)."""
        per_epoch = [
            log.steps / max(1, log.epochs_done) if self.unit == "epoch" else 1.0 for log in logs
        ]
        return {
            "unfreezing": [
                [[round(unit * scale), k + 1] for k, (unit, _depth) in enumerate(sorted(line))]
                for line, scale in zip(self.timelines, per_epoch, strict=False)
            ]
        }

    def state_dict(self) -> StateDict:
        """Units counted in the current task, whether a task is running, the timelines and
        the names of the parameters allowed to be unfrozen (all JSON)."""
        return {
            "units": self.units,
            "in_task": self._in_task,
            "timelines": [[[u, d] for u, d in line] for line in self.timelines],
            "trainable": sorted(self._trainable or ()),
        }

    def load_state_dict(self, state: StateDict) -> None:
        """Restore the schedule; the model's ``requires_grad`` flags are set at the next hook
        (``on_task_start`` when resuming inside a task, or ``on_step`` / ``on_epoch_end``)."""
        if set(state) != _STATE_KEYS:
            raise RetainError(
                f"gradual_unfreezing state has keys {sorted(state)}, expected "
                f"{sorted(_STATE_KEYS)}; load a state saved by gradual_unfreezing"
            )
        self.units = int(state["units"])
        self._in_task = bool(state["in_task"])
        self.timelines = [[(int(u), int(d)) for u, d in line] for line in state["timelines"]]
        self._trainable = {str(n) for n in state["trainable"]}
        self._known = self._known or set(self._trainable)
        self._pending = True

    # ------------------------------------------------------------------------------ helpers
    def _record(self, model: nn.Module) -> None:
        named = list(model.named_parameters())
        self._trainable = {n for n, p in named if p.requires_grad}
        self._known = {n for n, _ in named}
        if not self._trainable:
            raise RetainError(
                f"{type(model).__name__} has no trainable parameter, so gradual_unfreezing has "
                "nothing to unfreeze; unfreeze the model or drop the strategy"
            )

    def _stack_of(self, model: nn.Module) -> BlockStack:
        names = {n for n, _ in model.named_parameters()}
        missing = self._known - names
        if missing:
            raise RetainError(
                f"gradual_unfreezing saw parameter {min(missing)!r} at prepare but the model no "
                "longer has it (a later strategy wrapped the model); list gradual_unfreezing "
                "after lora/peft"
            )
        if self._stack is None or not names <= set(self._stack.depths):
            self._stack = detect_block_stack(model, self.pattern)
        return self._stack

    def _begin(self, model: nn.Module) -> None:
        """Start a schedule: unit 0, only the head trainable."""
        self.units = 0
        self._pending = False
        stack = self._stack_of(model)
        self.timelines.append([(0, stack.head)])
        self._set_flags(model, stack)

    def _advance(self, model: nn.Module) -> None:
        if self._pending:
            self._apply(model)
        stack = self._stack_of(model)
        before = self._target(stack.num_blocks)
        self.units += 1
        after = self._target(stack.num_blocks)
        if not self.timelines:
            self.timelines.append([(0, stack.head)])
        for depth in range(before - 1, after - 1, -1):
            self.timeline.append((self.units, depth))
        if after < before:
            self._set_flags(model, stack)

    def _apply(self, model: nn.Module) -> None:
        self._pending = False
        self._set_flags(model, self._stack_of(model))

    def _set_flags(self, model: nn.Module, stack: BlockStack) -> None:
        """``requires_grad`` (or, distributed, the set of held names) for the current units."""
        lowest = self._target(stack.num_blocks)
        allowed = self._trainable or set()
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self._held = set()
        for name, param in model.named_parameters():
            depth = stack.depth(name)
            if name in allowed and depth is not None:
                trainable = depth >= lowest
                param.requires_grad_(trainable or distributed)
                if distributed and not trainable:
                    self._held.add(name)

    def describe_timeline(self) -> list[dict[str, Any]]:
        """The current task's timeline as report rows ``{"step" or "epoch": u, "depth": d,
        "group": g}``, with ``g`` one of ``"embeddings"``, ``"block.<l>"``, ``"head"``."""
        if not self.timeline:
            return []
        labels = BlockStack("", self.timeline[0][1], {})  # the first entry is the head, depth L
        return [{self.unit: u, "depth": d, "group": labels.label(d)} for u, d in self.timeline]


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (parameter names as at
    ``prepare``)."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model
