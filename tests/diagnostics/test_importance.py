"""Fisher overlap and quadrants: hand-made Fishers with hand-computed counts and overlap."""

from __future__ import annotations

import math

import pytest
import torch

from retain.diagnostics.importance import fisher_overlap, overlap
from retain.errors import RetainError


def test_overlap_is_one_for_proportional_and_zero_for_disjoint_fishers() -> None:
    a = torch.rand(50) + 0.01
    assert overlap(a, 7.0 * a) == pytest.approx(1.0)
    assert overlap(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])) == pytest.approx(0.0)
    # Hand value: F̂_a = (1/2, 1/2), F̂_b = (1, 0): d² = ½((√½ - 1)² + ½) = 1 - √½.
    assert overlap(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])) == pytest.approx(
        math.sqrt(0.5)
    )
    assert overlap(torch.zeros(3), torch.ones(3)) is None


def test_quadrant_counts_and_layers_of_hand_made_fishers() -> None:
    # 10 scalars per Fisher; top=0.2 -> the 2 largest of each are critical.
    old = {"layers.0.w": torch.tensor([9.0, 8.0, 1, 1, 1]), "layers.1.w": torch.tensor([1.0] * 5)}
    new = {
        "layers.0.w": torch.tensor([9.0, 1, 1, 1, 1]),
        "layers.1.w": torch.tensor([1.0, 7, 1, 1, 1]),
    }
    report = fisher_overlap(old, new, top=0.2)
    assert report.quadrants == {"old_only": 1, "new_only": 1, "both": 1, "neither": 7}
    assert report.thresholds == {"old": 1.0, "new": 1.0}
    first, second = report.layers
    assert first.quadrants == {"old_only": 1, "new_only": 0, "both": 1, "neither": 3}
    assert second.quadrants == {"old_only": 0, "new_only": 1, "both": 0, "neither": 4}
    assert first.old_share == pytest.approx(20 / 25)
    assert second.new_share == pytest.approx(11 / 24)
    assert first.old_mean == pytest.approx(4.0)
    assert report.numel == 10
    assert len(report.scatter["old"]) == 10


def test_zero_fisher_is_never_critical() -> None:
    old = {"w": torch.zeros(10)}
    new = {"w": torch.arange(10.0)}
    report = fisher_overlap(old, new, top=0.5)
    assert report.quadrants["old_only"] == 0
    assert report.quadrants["both"] == 0
    assert report.quadrants["new_only"] == 5


def test_mismatched_fishers_and_bad_top_are_errors() -> None:
    with pytest.raises(RetainError, match="different parameters"):
        fisher_overlap({"a": torch.ones(2)}, {"b": torch.ones(2)})
    with pytest.raises(RetainError, match="top must be"):
        fisher_overlap({"a": torch.ones(2)}, {"a": torch.ones(2)}, top=10)


def test_thresholds_are_the_exact_quantiles_of_the_concatenated_fishers() -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = {"layers.0.w": (7, 5), "layers.0.b": (5,), "layers.1.w": (300,), "head.w": (1,)}
    old = {n: torch.rand(s, generator=gen).pow(6) for n, s in shapes.items()}
    new = {n: torch.randint(0, 4, s, generator=gen).float() for n, s in shapes.items()}  # ties
    new["layers.1.w"][:100] = 0.0
    for top in (0.001, 0.1, 0.5, 0.97):
        report = fisher_overlap(old, new, top=top)
        for which, fisher in (("old", old), ("new", new)):
            flat = torch.cat([v.flatten() for v in fisher.values()])
            k = min(flat.numel(), max(1, math.ceil((1 - top) * flat.numel())))
            assert report.thresholds[which] == float(flat.kthvalue(k).values), (top, which)


def test_quantile_orders_negative_zero_tiny_and_infinite_values_as_kthvalue() -> None:
    from retain.diagnostics.importance import _quantile

    values = [
        torch.tensor([-0.0, 0.0, 1e-45, -1e-45, float("inf"), -float("inf"), -2.5]),
        torch.tensor([3.0, 1e-38, -1e-38]),
    ]
    flat = torch.cat(values)
    for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        k = min(flat.numel(), max(1, math.ceil(q * flat.numel())))
        assert _quantile(values, q) == float(flat.kthvalue(k).values), q
