"""The hooks engine of :func:`retain.diagnostics.fisher.estimate_fisher`: per-sample squared
gradients from one batched forward and backward per micro-batch, layer by layer.

Forward hooks on the modules that own the selected parameters record each call's input ``x`` and
output ``y`` (:class:`~retain.diagnostics.per_sample_rules.CallCapture`). The backward of
``L = Σ_n loss_n`` then runs with the outputs' gradient edges as its only inputs, so no
parameter gradient is formed and no output gradient is kept, and a tensor hook on each ``y``
receives ``g = ∂L/∂y`` as soon as the backward reaches that layer: it adds the call's
``Σ_n (∂loss_n/∂θ)²`` to the float32 sums at once (:mod:`~retain.diagnostics.per_sample_rules`)
and drops ``x`` and ``g``. A parameter used several
times (a tied embedding, read by the input embedding and the output head) waits until every use's
``(x, g)`` has arrived, and their per-sample gradients are summed before squaring
(:mod:`~retain.diagnostics.blocked_squares`).

Memory. Besides the model and the sums, a micro-batch holds the activations autograd keeps for
its backward and, during the backward, one layer's ``(x, g)`` (plus the first uses of tied
parameters), never every layer's output gradients at once; per-sample gradients of large weights
are built a block of rows at a time within ``block`` bytes. Micro-batches are sized so that
``2 × (Σ_calls x + 2·y bytes)`` per sample fits the budget (the factor 2 covers what autograd
saves besides them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from retain.data.task import Batch
from retain.diagnostics import per_sample_rules as rules
from retain.diagnostics.blocked_squares import RowAdder, add_summed_squares
from retain.diagnostics.memory_budget import rows_within

__all__ = ["HooksRun", "hooks_estimate"]

Use = tuple[rules.CallRecord, Tensor, str]  # (call, gradient of its output, parameter attribute)


class HooksRun(Protocol):
    """What the hooks engine reads and updates of one Fisher estimate."""

    model: nn.Module
    selected: dict[str, nn.Parameter]
    sums: dict[str, Tensor]
    n_total: int
    budget: int
    micro: int

    @property
    def block(self) -> int:
        """Bytes of per-sample gradient blocks built at once."""
        ...

    def batches(self) -> Iterator[tuple[int, Batch]]:
        """``(index of the first sample, batch)`` in order."""
        ...

    def losses(
        self, batch: Batch, start: int, targets: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-sample losses ``[n]`` and the targets used."""
        ...


def batch_len(batch: Batch) -> int:
    """Samples in ``batch`` (the first dimension of its first tensor)."""
    return int(next(iter(batch.values())).shape[0])


def hooks_estimate(run: HooksRun) -> tuple[dict[str, Tensor], int]:
    """Add every sample's squared gradients to ``run.sums``; return them and the sample count.

    Raises :class:`~retain.diagnostics.per_sample_rules.HooksUnsupportedError` for a module call
    or parameter use the hooks cannot split into samples (the caller falls back to the loop).
    """
    owners = rules.owners(run.model, run.selected.values())
    module_names = {m: n for n, m in run.model.named_modules(remove_duplicate=False)}
    kinds = {m: rules.rule_kind(m) for m in owners}
    capture = rules.CallCapture({m: module_names.get(m, type(m).__name__) for m in owners})
    handles = [m.register_forward_hook(capture.hook, with_kwargs=True) for m in owners]
    try:
        for start, batch in run.batches():
            lo, n = 0, batch_len(batch)
            while lo < n:
                part = {k: v[lo : lo + run.micro] for k, v in batch.items()}
                per_sample = _micro_batch(run, capture, owners, kinds, start + lo, part)
                lo += batch_len(part)
                run.micro = rows_within(run.budget, 2 * per_sample)
    finally:
        for handle in handles:
            handle.remove()
        capture.records = []
    return run.sums, run.n_total


def _micro_batch(
    run: HooksRun,
    capture: rules.CallCapture,
    owners: dict[nn.Module, list[str]],
    kinds: dict[nn.Module, rules.RuleKind],
    start: int,
    batch: Batch,
) -> float:
    """Add one micro-batch's per-sample squares; return its kept bytes per sample."""
    targets: Tensor | None = None
    while True:
        capture.records, capture.n, capture.active = [], batch_len(batch), True
        try:
            losses, targets = run.losses(batch, start, targets)
        finally:
            capture.active = False
        changed = {r.module for r in capture.records if r.modified()}
        if not changed:
            break
        capture.clone |= changed  # outputs or inputs modified in place: record copies instead
    records = [r for r in capture.records if r.out.requires_grad]
    capture.records = []
    kept = sum(r.x.nbytes + 2 * r.out.nbytes for r in records)  # x, y and ∂L/∂y
    total = losses.sum()
    del losses
    name_of = {id(p): n for n, p in run.selected.items()}
    edges = rules.autograd_uses(total.grad_fn, set(name_of)) if total.grad_fn is not None else {}
    stream = _Stream(run, kinds, owners, name_of, edges)
    hooks = [r.out.register_hook(stream.on_grad(r)) for r in records]  # type: ignore[no-untyped-call]
    inputs = [get_gradient_edge(r.out) for r in records]
    for record in records:  # the edges keep the hooks; nothing else needs the outputs
        record.out = record.out.new_empty(0)
    try:
        if inputs and total.grad_fn is not None:
            torch.autograd.backward(total, inputs=inputs)
    finally:
        for hook in hooks:
            hook.remove()
        for record in records:
            record.x = record.x.new_empty(0)
    stream.check()
    return kept / max(batch_len(batch), 1)


class _Stream:
    """Adds each call's per-sample squares as the backward delivers its output gradient."""

    def __init__(
        self,
        run: HooksRun,
        kinds: dict[nn.Module, rules.RuleKind],
        owners: dict[nn.Module, list[str]],
        name_of: dict[int, str],
        edges: dict[int, int],
    ) -> None:
        self.run, self.kinds, self.owners = run, kinds, owners
        self.name_of = name_of
        self.uses = {name_of[i]: count for i, count in edges.items()}  # graph uses per parameter
        self.seen: dict[str, int] = {}
        self.waiting: dict[str, list[Use]] = {}  # first uses of parameters used several times

    def on_grad(self, record: rules.CallRecord) -> Callable[[Tensor], None]:
        """The tensor hook of ``record``'s output."""

        def hook(grad: Tensor) -> None:
            with torch.no_grad():  # torch.func's vjp still differentiates inside
                finished = self._add(record, grad)
            waiting = {id(r) for uses in self.waiting.values() for r, _, _ in uses}
            for done in finished:  # autograd's own saved copy goes when its backward has run
                if id(done) not in waiting:
                    done.x = done.x.new_empty(0)

        return hook

    def _add(self, record: rules.CallRecord, grad: Tensor) -> list[rules.CallRecord]:
        """Add what ``record``'s output gradient completes; return the calls it completed."""
        module = record.module
        single: dict[str, Tensor] = {}
        finished = [record]
        for attr in self.owners[module]:
            name = self.name_of[id(getattr(module, attr))]
            self.seen[name] = self.seen.get(name, 0) + 1
            if self.uses.get(name, 0) <= 1:
                single[attr] = self.run.sums[name]
                continue
            uses = self.waiting.setdefault(name, [])
            uses.append((record, grad, attr))
            if len(uses) == self.uses[name]:
                self._add_summed(name, self.waiting.pop(name))
                finished += [r for r, _, _ in uses]
        if single:
            kind = self.kinds[module]
            block = self.run.block
            rules.add_sum_of_squares(module, kind, single, record.x, grad, block, record.key)
        return finished

    def _add_summed(self, name: str, uses: list[Use]) -> None:
        adders = [_adder(self.kinds[r.module], r, grad, attr) for r, grad, attr in uses]
        blocked = all(rules.row_blocks(self.kinds[r.module], attr) for r, _, attr in uses)
        n = uses[0][0].x.shape[0]
        add_summed_squares(self.run.sums[name], adders, n, self.run.block, row_blocks=blocked)

    def check(self) -> None:
        """Every selected parameter's graph uses must all have come through hooked calls."""
        for name in self.run.selected:
            uses, hooked = self.uses.get(name, 0), self.seen.get(name, 0)
            if uses != hooked:
                raise rules.HooksUnsupportedError(
                    f"parameter {name!r}: the autograd graph uses it {uses} times but hooked "
                    f"modules account for {hooked} (it is used outside its own module)"
                )


def _adder(kind: rules.RuleKind, record: rules.CallRecord, grad: Tensor, attr: str) -> RowAdder:
    """One use's per-sample gradients of ``attr``, added a block of samples and rows at a time."""

    def add(dense: Tensor, samples: slice, rows: slice) -> None:
        x, g = record.x[samples], grad[samples]
        rules.add_per_sample(record.module, kind, attr, x, g, dense, record.key, rows)

    return add
