"""One optimizer step over a global batch: micro-batches, mixed precision and data parallelism.

A *global batch* is the ``batch_size`` examples of one optimizer step. With ``W`` processes
(``torch.distributed`` initialised) and ``A`` accumulation steps it is cut into ``W · A``
micro-batches; rank ``r`` takes micro-batches ``r, r + W, r + 2W, ...``. Every micro-batch loss is a
*sum* over its target positions divided by the global count ``N`` of target positions (all ranks,
all micro-batches; one scalar all-reduce), and gradients are summed across ranks, so

    ∇ = (1/N) Σ_{micro-batches m} Σ_{targets j ∈ m} ∇ ℓ_j

is exactly the gradient of the global batch's mean loss whatever ``W`` and ``A`` are (up to the
order of floating-point additions). With ``W = A = 1`` the step is the plain
``batch_loss(...).backward()``. Target positions are counted without the model
(:func:`retain.data.task.target_count`): one per label for classification, one per predicted
token for a causal LM, which is how Hugging Face averages a causal-LM loss.

Gradient synchronisation is done here (one flat all-reduce per dtype, after the last
micro-batch) rather than by wrapping the model in ``DistributedDataParallel``: strategies then see
the plain module and whole gradients (penalty gradients, A-GEM projections and clipping act on
the global gradient, identically on every rank). Under ``accelerate launch`` / ``torchrun`` the
process group is set up by :func:`retain.distributed.init_distributed` (Accelerate's
``PartialState``).

Mixed precision: ``"bf16"`` runs forward passes under ``torch.autocast`` (CPU or CUDA) with float32
master weights; ``"fp16"`` (CUDA only) also scales the loss with ``torch.amp.GradScaler`` and
unscales before clipping, so strategies see true gradients; a step whose gradients overflow is
skipped by the scaler, as in the Trainer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from retain.data.task import IGNORE_INDEX, Batch, Task, batch_loss, summed_loss, target_count
from retain.distributed import is_sharded, rank_and_world
from retain.errors import RetainError

__all__ = ["Precision", "StepRunner", "check_precision", "finite_or_raise"]

Precision = Literal["fp32", "bf16", "fp16"]


@dataclass
class StepRunner:
    """Computes one optimizer step's gradients for ``task`` on ``model``; see the module docstring.

    ``backward(indices)`` leaves the global-batch gradient in ``.grad`` (unscaled, synchronised)
    and returns the global mean loss, identical on every rank.
    """

    model: nn.Module
    task: Task
    grad_accum: int = 1
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        if self.grad_accum < 1:
            raise RetainError(f"grad_accum must be >= 1, got {self.grad_accum}")
        self.rank, self.world_size = rank_and_world()
        self.sharded = is_sharded(self.model)
        self.device = _model_device(self.model)
        check_precision(self.precision, self.model)
        enabled = self.precision == "fp16"
        self.scaler = torch.amp.GradScaler("cuda", enabled=enabled) if enabled else None

    @property
    def simple(self) -> bool:
        """One process, no accumulation: the plain ``batch_loss(...).backward()`` path."""
        return self.world_size == 1 and self.grad_accum == 1

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The forward-pass context for ``precision``."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def backward(self, indices: Sequence[int]) -> float:
        """Accumulate the gradient of the global batch ``indices``; returns its mean loss."""
        examples = self.task.examples
        if self.simple:
            batch = _to(self.task.collate([examples[int(i)] for i in indices]), self.device)
            with self.autocast():
                loss = batch_loss(self.task.objective, self.model, batch)
            self._backward(loss)
            return float(loss.item())
        micro = [(_to(b, self.device), w) for b, w in self._my_batches(indices)]
        counts = [w * target_count(self.task.objective, b) for b, w in micro]
        total = _all_reduce_scalar(float(sum(counts)))
        if total == 0:
            raise RetainError(
                f"task {self.task.name!r}: a batch has no target positions (every label is "
                f"{IGNORE_INDEX}); check the labels"
            )
        # FSDP2 averages the ranks' gradient shards: W times each rank's share makes the sum.
        scale = float(self.world_size) if self.sharded else 1.0
        mine = 0.0
        for batch, weight in micro:
            with self.autocast():
                logits, targets = self.task.objective.logits_and_targets(self.model, batch)
                loss = summed_loss(logits, targets) * (weight * scale / total)
            self._backward(loss)
            mine += float(loss.item()) / scale
        if not self.sharded:
            self._sync_gradients()
        return _all_reduce_scalar(mine)

    def unscale(self, optimizer: Optimizer) -> None:
        """Under fp16, divide the gradients by the loss scale (before clipping and strategies)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: Optimizer) -> None:
        """``optimizer.step()`` (through the scaler under fp16, which skips overflowing steps)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def _backward(self, loss: Tensor) -> None:
        scaled = self.scaler.scale(loss) if self.scaler is not None else loss
        scaled.backward()  # type: ignore[no-untyped-call]

    def _my_batches(self, indices: Sequence[int]) -> Iterator[tuple[Batch, float]]:
        """This rank's micro-batches of the global batch, each with its weight: 1, or 0 for the
        stand-in an FSDP2 rank runs where its share is empty (every rank must run every
        micro-batch, or the gradient collectives would wait forever)."""
        parts = self.world_size * self.grad_accum
        chunks = _split(list(indices), parts)
        examples = self.task.examples
        for chunk in chunks[self.rank :: self.world_size]:
            if chunk:
                yield self.task.collate([examples[int(i)] for i in chunk]), 1.0
            elif self.sharded:
                yield self.task.collate([examples[int(indices[0])]]), 0.0

    def _sync_gradients(self) -> None:
        if self.world_size == 1:
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        # A parameter may get a gradient on one rank only (an empty micro-batch): agree first.
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
        torch.distributed.all_reduce(has, op=torch.distributed.ReduceOp.MAX)
        for p, flag in zip(params, has.tolist(), strict=True):
            if flag and p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params if p.grad is not None]
        for dtype in sorted({g.dtype for g in grads}, key=str):
            same = [g for g in grads if g.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in same])
            torch.distributed.all_reduce(flat)
            offset = 0
            for g in same:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()


def check_precision(precision: str, model: nn.Module) -> None:
    """Refuse an unknown ``precision`` and ``"fp16"`` on a model that is not on a CUDA device."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise RetainError(f"unknown precision {precision!r}; use 'fp32', 'bf16' or 'fp16'")
    device = _model_device(model)
    if precision == "fp16" and device.type != "cuda":
        raise RetainError(
            f"precision 'fp16' needs a CUDA device (the model is on {device}); use 'bf16' or 'fp32'"
        )


def _split(indices: list[int], parts: int) -> list[list[int]]:
    """``indices`` cut into ``parts`` consecutive chunks whose sizes differ by at most one."""
    size, extra = divmod(len(indices), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (1 if k < extra else 0)
        out.append(indices[start:end])
        start = end
    return out


def _all_reduce_scalar(value: float) -> float:
    if rank_and_world()[1] == 1:
        return value
    box = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(box)
    return float(box.item())


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _to(batch: Batch, device: torch.device) -> Batch:
    if all(v.device == device for v in batch.values()):
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def finite_or_raise(loss: float, task: str, step: int, saved: Callable[[int], str]) -> None:
    """Raise a one-line :class:`RetainError` naming ``step`` when ``loss`` is NaN or infinite.

    ``saved(step - 1)`` describes what was kept (the newest checkpoint saved by the step before),
    appended to the message.
    """
    if math.isfinite(loss):
        return
    raise RetainError(
        f"task {task!r}: loss is {loss} at step {step}; training stopped{saved(step - 1)}. "
        "Lower the learning rate, enable max_grad_norm or check the data"
    )
