"""A-GEM's per-step work without per-step Python loops: memory batches cut from one stacked
copy of the memory, and the projection done with multi-tensor ops and one host sync.

Both give exactly what the straightforward computation gives. A memory batch drawn by
:func:`draw_index` and cut from :class:`StackedMemory` equals ``stack_collate(draw(...))``
element for element (the same generator calls pick the same rows). :func:`project` computes

    d = g · g_ref,   c = d / (g_ref · g_ref),   g ← g − c · g_ref   when d < 0,

with ``d`` accumulated in float32 (at least) and ``g_ref · g_ref`` in float32, over every
parameter as one vector. Worked example: ``g = (1, 0)``, ``g_ref = (−1, 1)``: ``d = −1``,
``g_ref · g_ref = 2``, ``c = −0.5``, ``g ← (1, 0) + 0.5 · (−1, 1) = (0.5, 0.5)``, and
``g · g_ref = 0`` afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from retain.data.task import Batch, Example, stack_collate
from retain.errors import RetainError

__all__ = ["StackedMemory", "draw_index", "project"]


def draw_index(size: int, k: int, generator: torch.Generator) -> Tensor:
    """Row indices of ``k`` of ``size`` examples, with exactly the generator calls of
    :func:`retain.strategies.replay_buffer.draw`: without replacement when ``k <= size``, else
    with replacement."""
    if k <= size:
        return torch.randperm(size, generator=generator)[:k]
    return torch.randint(size, (k,), generator=generator)


class StackedMemory:
    """The memory collated once (``stack_collate`` over every example), so a memory batch is one
    ``index_select`` per key instead of a collate of ``k`` examples per step.

    Only for ``stack_collate``: a padding collate pads to the longest example of the batch, so
    cutting rows from the whole memory would change the padding. :meth:`batch` returns None when
    the memory cannot be stacked that way (the caller collates the drawn examples instead).
    """

    def __init__(self) -> None:
        self._source: Sequence[Example] | None = None
        self._size = -1
        self._stacked: Batch | None = None

    def batch(
        self,
        memory: Sequence[Example],
        collate: Callable[[Sequence[Example]], Batch],
        index: Tensor,
    ) -> Batch | None:
        """Rows ``index`` of the stacked ``memory``; None when ``collate`` is not
        ``stack_collate`` or the examples' shapes differ."""
        if collate is not stack_collate:
            return None
        if self._source is not memory or self._size != len(memory):
            self._source, self._size = memory, len(memory)
            try:
                self._stacked = stack_collate(memory)
            except RetainError:
                self._stacked = None
        if self._stacked is None:
            return None
        return {key: value.index_select(0, index) for key, value in self._stacked.items()}

    def forget(self) -> None:
        """Drop the stacked copy (the memory changed in place)."""
        self._source, self._size, self._stacked = None, -1, None


def project(
    grads: list[Tensor],
    refs: list[Tensor],
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> bool:
    """Project ``grads`` in place off ``refs`` when ``grads · refs < 0`` (module docstring);
    returns whether it did. One host sync.

    ``reduce`` sums the pair ``(g · g_ref, g_ref · g_ref)`` over processes when ``grads`` and
    ``refs`` are this process's shards of sharded parameters
    (:func:`retain.distributed.all_reduce_sum`): one collective of two numbers.
    """
    wide = [torch.promote_types(g.dtype, torch.float32) for g in grads]
    g32 = [g if g.dtype == w else g.to(w) for g, w in zip(grads, wide, strict=True)]
    r32 = [r if r.dtype == w else r.to(w) for r, w in zip(refs, wide, strict=True)]
    dot = torch.stack(
        [torch.dot(g.reshape(-1), r.reshape(-1)) for g, r in zip(g32, r32, strict=True)]
    ).sum()
    norm = torch.stack(torch._foreach_norm([r.float() for r in refs])).square().sum()
    pair = torch.stack([dot, norm.to(dot.dtype)])
    if reduce is not None:
        pair = reduce(pair)
    dot_value, coef = torch.stack([pair[0], pair[0] / pair[1]]).tolist()
    if not dot_value < 0:
        return False
    same = [r if r.dtype == g.dtype else r.to(g.dtype) for g, r in zip(grads, refs, strict=True)]
    torch._foreach_add_(grads, same, alpha=-coef)
    return True
