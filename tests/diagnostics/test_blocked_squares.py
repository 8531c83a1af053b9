"""Row-blocked sums of squared per-sample gradients equal the dense per-sample reference."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from retain.diagnostics import per_sample_rules as rules
from retain.diagnostics.blocked_squares import (
    RowAdder,
    add_linear_weight_squares,
    add_summed_squares,
    block_shape,
)


def linear_reference(a: Tensor, g: Tensor) -> Tensor:
    """``Σ_n (g_nᵀ a_n)²`` from the dense ``[N, R, C]`` per-sample gradients."""
    return torch.einsum("ntr,ntc->nrc", g, a).square().sum(0)


def test_block_shape_fits_the_budget_and_keeps_whole_rows_when_asked() -> None:
    assert block_shape(49152, 576, 4, 32 * 2**20) == (1, 14563)  # the docstring's example
    assert block_shape(10, 3, 100, 10_000, cpu=True) == (8, 10)  # CPU: 8 samples at most
    assert block_shape(10, 3, 100, 10_000) == (83, 10)
    assert block_shape(10, 3, 5, 1) == (1, 1)  # below one row: one row, one sample
    assert block_shape(10, 3, 5, 1, row_blocks=False) == (1, 10)


@pytest.mark.parametrize("budget", [1, 4 * 7 * 3, 4 * 7 * 5 * 2, 2**30])
def test_linear_weight_squares_in_blocks_equal_the_dense_reference(budget: int) -> None:
    gen = torch.Generator().manual_seed(0)
    a, g = torch.randn(5, 4, 7, generator=gen), torch.randn(5, 4, 11, generator=gen)
    acc = torch.full((11, 7), 0.5)
    add_linear_weight_squares(acc, a, g, budget)
    torch.testing.assert_close(acc, 0.5 + linear_reference(a, g), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("budget", [1, 4 * 6 * 4, 2**30])
def test_tied_embedding_and_head_are_summed_before_squaring_in_row_blocks(budget: int) -> None:
    gen = torch.Generator().manual_seed(1)
    vocab, width, n, tokens = 9, 6, 4, 5
    embedding = nn.Embedding(vocab, width, padding_idx=0)
    head = nn.Linear(width, vocab, bias=False)
    ids = torch.randint(0, vocab, (n, tokens), generator=gen)
    g_emb = torch.randn(n, tokens, width, generator=gen)
    x_head, g_head = (
        torch.randn(n, tokens, width, generator=gen),
        torch.randn(n, tokens, vocab, generator=gen),
    )
    dense = torch.zeros(n, vocab, width)  # reference: per-sample gradients of the shared weight
    dense += torch.einsum("ntv,ntc->nvc", g_head, x_head)
    for i in range(n):
        for t in range(tokens):
            if int(ids[i, t]) != 0:
                dense[i, int(ids[i, t])] += g_emb[i, t]

    def adder(module: nn.Module, kind: rules.RuleKind, x: Tensor, g: Tensor) -> RowAdder:
        def add(block: Tensor, samples: slice, rows: slice) -> None:
            rules.add_per_sample(module, kind, "weight", x[samples], g[samples], block, None, rows)

        return add

    adders = [adder(embedding, "embedding", ids, g_emb), adder(head, "linear", x_head, g_head)]
    acc = torch.zeros(vocab, width)
    add_summed_squares(acc, adders, n, budget)
    torch.testing.assert_close(acc, dense.square().sum(0), rtol=1e-6, atol=1e-6)


def test_a_use_that_needs_whole_rows_gets_them() -> None:
    gen = torch.Generator().manual_seed(2)
    norm = nn.LayerNorm(5)
    x, g = torch.randn(6, 3, 5, generator=gen), torch.randn(6, 3, 5, generator=gen)
    reference = torch.zeros(5)
    rules.add_sum_of_squares(norm, "layer_norm", {"weight": reference}, x, g, 2**30)

    def add(block: Tensor, samples: slice, rows: slice) -> None:
        assert rows == slice(0, 5)
        rules.add_per_sample(norm, "layer_norm", "weight", x[samples], g[samples], block)

    acc = torch.zeros(5)
    add_summed_squares(acc, [add], 6, 1, row_blocks=False)
    torch.testing.assert_close(acc, reference, rtol=1e-6, atol=1e-7)
