"""A-GEM: project each gradient so the loss on an episodic memory of earlier tasks cannot rise.

Arslan Chaudhry, Marc'Aurelio Ranzato, Marcus Rohrbach, Mohamed Elhoseiny, "Efficient Lifelong
Learning with A-GEM", ICLR 2019. With ``g`` the task gradient and ``g_ref`` the gradient of the
loss on a batch drawn from the memory (same parameters, same objective),

    if g · g_ref < 0:   g ← g − (g · g_ref) / (g_ref · g_ref) · g_ref,

so the step never points uphill on the memory loss to first order (``g_new · g_ref = 0``); when
``g · g_ref >= 0`` the gradient is left alone. Dot products run over every parameter that has a
gradient, as one flat vector.

Distributed: when ``torch.distributed`` is initialised, ``g_ref`` is averaged over ranks (one
all-reduce) before the test, so every rank projects its (already averaged) gradient identically.
Each rank keeps its own memory, filled from the examples its ``on_task_end`` is given (in
retain's loop every rank is given the whole task, so the seeded memories and draws agree). The
hook must get the unwrapped module (as ``Trainer`` callbacks do), not a
``DistributedDataParallel`` wrapper, whose gradient hooks must not see the memory pass.

Sharded (FSDP2 ``fully_shard``): rank ``r`` of ``W`` back-propagates ``W · Σ_{its rows} ℓ / N``
over its consecutive share of the drawn memory batch (``N``: the whole batch's target
positions), with the task gradient moved aside, so FSDP2's averaging reduce-scatter leaves
exactly ``g_ref``'s local shard in ``.grad``; the task gradient is then put back. ``g · g_ref``
and ``g_ref · g_ref`` are summed over the local shards and all-reduced together (one collective
of two numbers), so every rank takes the same decision and projects its own shard.

``reference_every = k > 1`` (an approximation, off by default) computes ``g_ref`` on the first
step of every ``k`` and reuses it for the next ``k − 1`` steps: a step then costs about
``1 + c / k`` plain steps instead of ``1 + c`` (``c``: the memory pass over the task pass), at the
price of a reference that is up to ``k − 1`` steps old. Chaudhry et al. draw a fresh one per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from retain.data.task import Batch, Example, Objective, Task, batch_loss, summed_loss, target_count
from retain.data.task_heads import tag_with_head
from retain.distributed import all_reduce_sum, is_sharded, local_tensor, rank_and_world
from retain.errors import RetainError
from retain.strategies.base import StateDict, Strategy, register_strategy
from retain.strategies.memory_batch import StackedMemory, draw_index, project
from retain.strategies.replay_buffer import (
    ReplayBuffer,
    Selection,
    check_count,
    check_selection,
    derive_seed,
)

__all__ = ["AGEM"]


@register_strategy("A-GEM: project gradients that would raise the loss on an episodic memory")
class AGEM(Strategy):
    """A-GEM (Chaudhry et al., ICLR 2019): ``g ← g − (g·g_ref)/(g_ref·g_ref) g_ref`` when
    ``g·g_ref < 0``.

    Args:
        memory_size: examples kept in the episodic memory (0 switches A-GEM off).
        sample_size: memory examples per reference gradient (all of them when fewer are held).
        selection: ``"reservoir"`` or ``"class_balanced"``, as in ``replay``.
        seed: seeds memory selection and the draw of each memory batch.
        label_key: the example key with the class label (``"class_balanced"``).
        reference_every: steps that share one reference gradient (1: a fresh one every step, as
            in the paper; ``k > 1`` trades exactness for speed, see the module docstring).

    The reference gradient uses the objective and collate of the last task ended (after a resume,
    of the current task until the next task ends), in the model's current mode, and leaves no
    gradient behind. Examples from every task must collate together. :attr:`projections` counts
    the projected steps, :attr:`steps` the steps with a memory.
    """

    name = "agem"
    unsharded_only = None  # dot products all-reduced over shards: tests/training/test_fsdp.py

    def __init__(
        self,
        memory_size: int = 256,
        sample_size: int = 64,
        selection: Selection = "reservoir",
        seed: int = 0,
        label_key: str = "labels",
        reference_every: int = 1,
    ) -> None:
        self.memory_size = check_count(
            "agem", "memory_size", memory_size, 0, "; use 0 to switch A-GEM off"
        )
        self.sample_size = check_count("agem", "sample_size", sample_size, 1)
        self.selection = check_selection("agem", selection)
        self.seed = int(seed)
        self.label_key = label_key
        self.reference_every = check_count("agem", "reference_every", reference_every, 1)
        self.memory: ReplayBuffer | None = None
        if self.memory_size > 0:
            self.memory = ReplayBuffer(
                self.memory_size, self.selection, self.seed, label_key, "agem"
            )
        self._generator = torch.Generator().manual_seed(derive_seed(self.seed, "agem-batch"))
        self._objective: Objective | None = None
        self._collate: Callable[[Sequence[Example]], Batch] | None = None
        self._stacked = StackedMemory()  # memory batches without a per-step collate
        self._reference: list[Tensor] | None = None  # g_ref reused (reference_every > 1)
        #: optimizer steps whose gradient was projected
        self.projections = 0
        #: optimizer steps that computed a reference gradient
        self.steps = 0

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        """After a resume no task has ended here yet: use this task's objective and collate."""
        if self._objective is None:
            self._objective, self._collate = task.objective, task.collate

    def on_task_end(self, model: nn.Module, task: Task) -> None:
        """Offer the task's examples to the memory (tagged with their head's index when the
        model has one head per task); keep its objective and collate."""
        if self.memory is None:
            return
        examples = tag_with_head(model, task.name, task.examples)
        if len(self.memory):
            have, new = sorted(self.memory.examples[0]), sorted(examples[0])
            if have != new:
                raise RetainError(
                    f"agem: task {task.name!r} examples have keys {new} but the memory holds "
                    f"{have}; A-GEM memory batches mix tasks, so every task needs the same keys"
                )
        self.memory.add(examples)
        self._stacked.forget()
        self._reference = None
        self._objective, self._collate = task.objective, task.collate

    def after_backward(self, model: nn.Module) -> None:
        """Project the gradient when it conflicts with the memory's reference gradient."""
        memory, objective, collate = self.memory, self._objective, self._collate
        if memory is None or not len(memory) or objective is None or collate is None:
            return
        params = [p for p in model.parameters() if p.grad is not None]
        if not params:
            return
        sharded = is_sharded(model)
        refs = self._reference
        if refs is None or len(refs) != len(params) or self.steps % self.reference_every == 0:
            index = draw_index(len(memory), min(self.sample_size, len(memory)), self._generator)
            batch = self._stacked.batch(memory.examples, collate, index)
            if batch is None:
                batch = _collate(collate, [memory.examples[i] for i in index.tolist()])
            if sharded:
                refs = _sharded_reference_gradient(model, params, objective, batch)
            else:
                refs = _reference_gradient(model, params, objective, batch)
            self._reference = refs if self.reference_every > 1 else None
        self.steps += 1
        grads = [local_tensor(p.grad) for p in params if p.grad is not None]
        if project(grads, refs, all_reduce_sum if sharded else None):
            self.projections += 1

    def state_dict(self) -> StateDict:
        """The memory (examples, ``seen``, RNG state), the batch-draw RNG and the counters."""
        state: StateDict = self.memory.state_dict() if self.memory is not None else {}
        state["sample_rng"] = self._generator.get_state()
        state["projections"] = self.projections
        state["steps"] = self.steps
        for i, ref in enumerate(self._reference or []):  # reused for the next steps
            state[f"reference.{i}"] = ref
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what :meth:`state_dict` returned."""
        if self.memory is not None:
            self.memory.load_state_dict(state)
        self._stacked.forget()
        self._generator.set_state(state["sample_rng"])
        self.projections = int(state["projections"])
        self.steps = int(state["steps"])
        count = sum(1 for key in state if key.startswith("reference."))
        self._reference = [state[f"reference.{i}"] for i in range(count)] or None


def _collate(collate: Callable[[Sequence[Example]], Batch], examples: list[Example]) -> Batch:
    """The memory batch, with a collate failure turned into a :class:`RetainError`."""
    try:
        return collate(examples)
    except RetainError:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise RetainError(
            f"agem cannot batch memory examples from different tasks ({type(exc).__name__}: "
            f"{exc}); give the tasks a collate that pads (pad_collate)"
        ) from exc


def _reference_gradient(
    model: nn.Module, params: list[nn.Parameter], objective: Objective, batch: Batch
) -> list[Tensor]:
    """``g_ref``: the gradient of the loss on ``batch`` for each of ``params`` (zeros where the
    loss does not depend on it), averaged over ranks; ``.grad`` is not touched."""
    device = params[0].device
    batch = {k: v.to(device) for k, v in batch.items()}
    wanted = [p for p in params if p.requires_grad]
    with torch.enable_grad():
        loss = batch_loss(objective, model, batch)
        found = torch.autograd.grad(loss, wanted, allow_unused=True) if wanted else ()
    by_id = {id(p): g for p, g in zip(wanted, found, strict=True) if g is not None}
    refs = [by_id[id(p)].detach() if id(p) in by_id else torch.zeros_like(p) for p in params]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        flat = torch.cat([r.reshape(-1) for r in refs])
        torch.distributed.all_reduce(flat)
        flat /= torch.distributed.get_world_size()
        parts = torch.split(flat, [r.numel() for r in refs])
        refs = [part.view_as(r) for part, r in zip(parts, refs, strict=True)]
    return refs


def _sharded_reference_gradient(
    model: nn.Module, params: list[nn.Parameter], objective: Objective, batch: Batch
) -> list[Tensor]:
    """This rank's shards of ``g_ref`` on an FSDP2 model (module docstring); every rank must call
    it. The task gradient is moved aside for the memory pass and put back, so ``.grad`` ends as
    it was."""
    rank, world = rank_and_world()
    device = local_tensor(params[0]).device
    rows = next(iter(batch.values())).shape[0]
    size, extra = divmod(rows, world)
    start = rank * size + min(rank, extra)
    end = start + size + (1 if rank < extra else 0)
    weight = 1.0 if end > start else 0.0  # an empty share runs a zero-weight stand-in row
    if end == start:
        start, end = 0, 1
    mine = {k: v[start:end].to(device) for k, v in batch.items()}
    total = target_count(objective, batch)
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        with torch.enable_grad():
            logits, targets = objective.logits_and_targets(model, mine)
            loss = summed_loss(logits, targets) * (weight * world / max(total, 1))
        loss.backward()  # type: ignore[no-untyped-call]
        refs = [
            local_tensor(p.grad).detach()
            if p.grad is not None
            else torch.zeros_like(local_tensor(p))
            for p in params
        ]
    finally:
        for p, grad in zip(params, saved, strict=True):
            p.grad = grad
    return refs
