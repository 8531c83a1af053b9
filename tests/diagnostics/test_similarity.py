"""Linear CKA: 1 for identical representations, invariant to orthogonal transforms and isotropic
scaling, equal to the HSIC (Gram-matrix) form, and < 1 for a model that changed."""

from __future__ import annotations

import copy

import pytest
import torch

from retain.diagnostics.similarity import linear_cka, representation_shift
from retain.errors import RetainError
from training_helpers import random_task, tiny_classifier


def hsic_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Reference: CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = XXᵀ, L = YYᵀ."""
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k = h @ (x.double() @ x.double().T) @ h
    m = h @ (y.double() @ y.double().T) @ h
    return float((k * m).sum() / ((k * k).sum() * (m * m).sum()).sqrt())


def test_identical_representations_give_one() -> None:
    x = torch.randn(40, 7)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_invariant_to_orthogonal_transform_and_isotropic_scaling() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(60, 8, dtype=torch.float64), torch.randn(60, 5, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    reference = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(reference, rel=1e-9)
    assert linear_cka(4.5 * x, 0.1 * y) == pytest.approx(reference, rel=1e-9)
    assert linear_cka(x @ q, x) == pytest.approx(1.0, abs=1e-9)
    # Not invariant to an anisotropic scaling: the property is specific.
    scale = torch.linspace(0.1, 10.0, 8, dtype=torch.float64)
    assert linear_cka(x * scale, x) < 0.9


def test_equals_the_gram_matrix_form() -> None:
    torch.manual_seed(1)
    x = torch.randn(30, 6)
    y = x @ torch.randn(6, 4) + 0.5 * torch.randn(30, 4)
    assert linear_cka(x, y) == pytest.approx(hsic_cka(x, y), rel=1e-6)  # float32 products
    assert linear_cka(x.double(), y.double()) == pytest.approx(hsic_cka(x, y), rel=1e-12)


def test_bad_shapes_are_errors() -> None:
    with pytest.raises(RetainError, match="same n"):
        linear_cka(torch.randn(3, 2), torch.randn(4, 2))


def test_representation_shift_is_one_for_the_same_model_and_lower_after_a_change() -> None:
    model = tiny_classifier()
    batches = random_task("t", n=12).batches(4)
    same = representation_shift(model, copy.deepcopy(model), batches)
    assert [s.name for s in same] == ["embeddings", "block 0", "block 1"]
    assert all(s.cka == pytest.approx(1.0, abs=1e-6) for s in same)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for p in changed.bert.encoder.layer[1].parameters():
            p.add_(torch.randn_like(p))
    shift = representation_shift(model, changed, batches)
    assert shift[0].cka == pytest.approx(1.0, abs=1e-6)  # the embeddings did not change
    assert shift[1].cka == pytest.approx(1.0, abs=1e-6)  # nor did block 1
    assert shift[2].cka < 0.95
    limited = representation_shift(model, changed, batches, max_tokens=25)
    assert limited[2].cka != pytest.approx(shift[2].cka)  # fewer tokens, another estimate
