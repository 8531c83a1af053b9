"""Sums of squared per-sample gradients of large weights, built a block of rows at a time.

For a weight ``W [R, C]`` the per-sample gradient ``G_n = ∂loss_n/∂W`` of one sample is as large
as ``W`` (SmolLM2-135M's tied 49,152 × 576 embedding: 113 MB a sample; a 7B model's 32,000 × 4096
output head: 524 MB). The Fisher needs only ``Σ_n G_n²`` (elementwise), and row ``r`` of that sum
depends only on row ``r`` of every ``G_n``, so ``G`` is built in blocks ``[k samples, b rows, C]``
of at most ``budget`` bytes (float32):

    b = min(R, max(1, budget // (4 C))),    k = min(N, max(1, budget // (4 b C)), 8 on CPU)

Each block is squared in place and added sample by sample to the same rows of the float32
accumulator, so the working memory is one block (at most ``budget`` bytes) whatever the weight's
size. Sums equal the unblocked ones up to float32 rounding: each entry's sum over tokens is the
same product, only the order in which samples are added changes.

A block of ``G_n`` (rows ``r0 ≤ r < r1``) for one use of the weight:

* ``nn.Linear`` weight, input ``x [N, T, C]``, output gradient ``g [N, T, R]``:
  ``G_n[r0:r1] = g_n[:, r0:r1]ᵀ x_n`` (:func:`add_linear_rows`);
* ``nn.Embedding`` weight, ids ``[N, T]``, output gradient ``g [N, T, C]``:
  ``G_n[v] = Σ_{t: id_{n,t} = v} g_{n,t}`` for ``r0 ≤ v < r1`` (:func:`add_embedding_rows`).

A weight used several times (a tied embedding, read by the input embedding and by the output
head) gets its uses' blocks summed before squaring (:func:`add_summed_squares`).

Worked example: SmolLM2-135M's tied embedding ``[49152, 576]`` with a 32 MiB budget gives
``b = 33554432 // 2304 = 14563`` rows and ``k = 1``: four blocks of 34 MB per sample instead of
2 samples × 113 MB built at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "RowAdder",
    "add_embedding_rows",
    "add_linear_rows",
    "add_linear_weight_squares",
    "add_summed_squares",
    "block_shape",
]

RowAdder = Callable[[Tensor, slice, slice], None]
"""``adder(dense, samples, rows)``: add one use's per-sample gradients of samples ``samples`` and
weight rows ``rows`` into ``dense [k, b, C]`` in place (``C``: the scalars of one row)."""

_CPU_SAMPLES = 8  # samples per block on CPU: keeps the products in cache; more is slower


def block_shape(
    rows: int, row_numel: int, n: int, budget: int, *, row_blocks: bool = True, cpu: bool = False
) -> tuple[int, int]:
    """``(k samples, b rows)`` per block of a ``[rows, ...]`` weight with ``row_numel`` scalars a
    row and ``n`` samples, within ``budget`` bytes of float32 (see the module docstring);
    ``row_blocks=False`` keeps whole weights (``b = rows``) and no CPU cap on ``k``."""
    row_bytes = 4 * max(row_numel, 1)
    b = min(rows, max(1, budget // row_bytes)) if row_blocks else rows
    k = min(n, max(1, budget // (b * row_bytes)))
    return (min(k, _CPU_SAMPLES) if cpu and row_blocks else k), b


def add_linear_weight_squares(acc: Tensor, a: Tensor, g: Tensor, budget: int) -> None:
    """``acc += Σ_n (g_nᵀ a_n)²`` for a Linear weight ``acc [R, C]`` (float32), with inputs
    ``a [N, T, C]`` and output gradients ``g [N, T, R]`` (float32), in blocks of ``budget``."""

    def adder(dense: Tensor, samples: slice, rows: slice) -> None:
        add_linear_rows(dense, a[samples], g[samples], rows)

    add_summed_squares(acc, [adder], a.shape[0], budget)


def add_linear_rows(dense: Tensor, a: Tensor, g: Tensor, rows: slice) -> None:
    """``dense[n] += g_n[:, rows]ᵀ a_n`` for ``a [k, T, C]``, ``g [k, T, R]`` (float32)."""
    dense.baddbmm_(g[:, :, rows].transpose(1, 2), a)


def add_embedding_rows(
    dense: Tensor, keys: Tensor, values: Tensor, vocab: int, rows: slice
) -> None:
    """``dense[n, v - r0] += value`` for every ``(key = n·vocab + v, value)`` with ``v`` in
    ``rows = r0..r1`` (``dense [k, r1 - r0, C]``, ``values [m, C]`` float32, ``n`` counted from
    the block's first sample)."""
    start, stop = rows.start, rows.stop
    ids, sample = keys % vocab, keys // vocab
    keep = (ids >= start) & (ids < stop)
    local = sample[keep] * (stop - start) + ids[keep] - start
    dense.view(-1, dense.shape[-1]).index_put_((local,), values[keep], accumulate=True)


def add_summed_squares(
    acc: Tensor,
    adders: Sequence[RowAdder],
    n: int,
    budget: int,
    *,
    row_blocks: bool = True,
) -> None:
    """``acc += Σ_n (Σ_u G_{u,n})²`` over the uses ``u`` (one ``adder`` each) of a weight
    ``acc [R, ...]`` (float32, contiguous; a 0-d weight is one row) and ``n`` samples, built in
    blocks ``dense [k, b, C]`` (``C`` scalars a row) of at most ``budget`` bytes, or one row
    times one sample if that is more; ``row_blocks=False`` (a use that needs whole rows) keeps
    ``b = R``."""
    if acc.numel() == 0 or n == 0:
        return
    flat = acc.view(acc.shape[0] if acc.dim() else 1, -1)
    rows, row_numel = flat.shape
    cpu = acc.device.type == "cpu"
    k, b = block_shape(rows, row_numel, n, budget, row_blocks=row_blocks, cpu=cpu)
    block = torch.empty(k * b * row_numel, device=acc.device)
    for r0 in range(0, rows, b):
        r1 = min(r0 + b, rows)
        for lo in range(0, n, k):
            hi = min(lo + k, n)
            dense = block[: (hi - lo) * (r1 - r0) * row_numel].view(hi - lo, r1 - r0, row_numel)
            dense.zero_()
            for adder in adders:
                adder(dense, slice(lo, hi), slice(r0, r1))
            for one in dense.square_():  # sample by sample: no second [b, ...] tensor
                flat[r0:r1].add_(one)
