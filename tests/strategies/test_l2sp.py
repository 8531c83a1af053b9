"""L2-SP: R(θ) = α/2 Σ (θ − θ*)², checked against autograd and against hand-computed anchors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from retain.data.task import Task
from retain.errors import RetainError
from retain.strategies import anchored
from retain.strategies.base import build_strategy
from retain.strategies.l2sp import L2SP
from retain.strategies.state import load_strategy_state, save_strategy_state
from retain.training.loop import TrainConfig, train_task

CONFIG = TrainConfig(lr=0.05, batch_size=8, shuffle=False)


class MLP(nn.Module):
    """A two-layer classifier whose forward takes ``x`` (as the Classification objective calls)."""

    def __init__(self, seed: int = 0, d_in: int = 5, hidden: int = 7, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(d_in, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(torch.tanh(self.body(x)))
        return out


def make_task(name: str, seed: int, n: int = 24) -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return Task(name, [{"x": x[i], "labels": y[i]} for i in range(n)])


def weights(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def perturb(model: nn.Module, seed: int, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def added_gradient(strategy: L2SP, model: nn.Module, seed: int) -> dict[str, Tensor]:
    """What ``after_backward`` adds to random existing gradients."""
    g = torch.Generator().manual_seed(seed)
    before = {}
    for n, p in model.named_parameters():
        p.grad = torch.randn(p.shape, generator=g)
        before[n] = p.grad.clone()
    strategy.after_backward(model)
    return {n: p.grad - before[n] for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("storage_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("seed", range(4))
def test_gradient_equals_autograd_of_the_penalty(storage_dtype: str, seed: int) -> None:
    model = MLP(seed)
    alpha = [0.01, 0.3, 1.0, 7.5][seed]
    strategy = L2SP(alpha=alpha, storage_dtype=storage_dtype)  # type: ignore[arg-type]
    strategy.on_task_start(model, make_task("a", seed))
    perturb(model, seed + 100)
    params = dict(model.named_parameters())
    expected = torch.autograd.grad(strategy.penalty(model), list(params.values()))
    added = added_gradient(strategy, model, seed)
    for (name, p), want in zip(params.items(), expected, strict=True):
        # Independent reference from the stored (possibly rounded) anchor.
        anchor = strategy.anchors[name].float()
        assert torch.allclose(want, alpha * (p.detach() - anchor), atol=1e-6)
        assert torch.allclose(added[name], want, atol=1e-6, rtol=1e-6), name
    dist = sum(
        float(((p.detach() - strategy.anchors[n].float()) ** 2).sum()) for n, p in params.items()
    )
    assert strategy.penalty(model).item() == pytest.approx(0.5 * alpha * dist, rel=1e-5)


def test_bfloat16_anchor_is_rounded_and_half_the_memory() -> None:
    model = MLP()
    task = make_task("a", 0)
    full, half = L2SP(), L2SP(storage_dtype="bfloat16")
    full.on_task_start(model, task)
    half.on_task_start(model, task)
    assert (
        half.stored_bytes * 2 == full.stored_bytes == 4 * sum(p.numel() for p in model.parameters())
    )
    for name, p in model.named_parameters():
        assert half.anchors[name].dtype == torch.bfloat16
        assert torch.equal(half.anchors[name], p.detach().bfloat16())


def test_parameters_added_after_the_anchor_and_frozen_ones_are_not_penalised() -> None:
    model = MLP()
    strategy = L2SP(alpha=1.0)
    strategy.on_task_start(model, make_task("a", 0))
    model.extra = nn.Linear(3, 2)  # a new head, absent at anchor time
    model.body.bias.requires_grad_(False)
    perturb(model, 1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    strategy.after_backward(model)
    assert model.body.bias.grad is None
    assert model.extra.weight.grad is not None
    assert torch.equal(model.extra.weight.grad, torch.zeros(2, 3))
    assert model.head.weight.grad is not None
    assert model.head.weight.grad.abs().sum() > 0


def test_small_chunks_and_split_tensors_give_the_same_gradient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cutting tensors into flat pieces (as on CPU for large models) changes no bit."""
    model = MLP()
    whole, cut = L2SP(alpha=0.7), L2SP(alpha=0.7)
    whole.on_task_start(model, make_task("a", 0))
    cut.on_task_start(model, make_task("a", 0))
    perturb(model, 2)
    want = added_gradient(whole, model, 3)
    monkeypatch.setitem(anchored.CHUNK_NUMEL, "cpu", 4)  # body.weight (35 entries) -> 9 pieces
    got = added_gradient(cut, model, 3)
    assert [i for i, _ in cut._store._bind(model)[0].split] == [0, 1, 2]  # all but head.bias
    for name in want:
        assert torch.equal(got[name], want[name]), name
    # A missing gradient is skipped, and a non-contiguous one is made contiguous first.
    g = torch.randn(5, 7).T
    model.body.weight.grad = g.clone()  # keeps the transposed strides
    assert not model.body.weight.grad.is_contiguous()
    model.head.weight.grad = None
    cut.after_backward(model)
    assert model.head.weight.grad is None
    expected = g + 0.7 * (model.body.weight.detach() - cut.anchors["body.weight"])
    assert torch.allclose(model.body.weight.grad, expected, atol=1e-7)


def test_params_regex_limits_the_penalty() -> None:
    model = MLP()
    strategy = L2SP(alpha=1.0, params=r"^head\.")
    strategy.on_task_start(model, make_task("a", 0))
    assert sorted(strategy.anchors) == ["head.bias", "head.weight"]
    perturb(model, 3)
    added = added_gradient(strategy, model, 0)
    assert torch.equal(added["body.weight"], torch.zeros_like(added["body.weight"]))
    anchor = strategy.anchors["head.weight"]
    assert torch.allclose(added["head.weight"], model.head.weight.detach() - anchor, atol=1e-6)


def test_alpha_zero_trains_exactly_like_no_strategy() -> None:
    plain, regularised = MLP(), MLP()
    strategy = L2SP(alpha=0.0)
    for t in range(2):
        train_task(plain, make_task(f"t{t}", t), None, CONFIG)
        train_task(regularised, make_task(f"t{t}", t), strategy, CONFIG)
    for name, w in weights(plain).items():
        assert torch.equal(w, weights(regularised)[name]), name


def test_pretrained_anchor_stays_and_task_start_anchor_moves() -> None:
    start = weights(MLP())
    pretrained, task_start = L2SP(alpha=0.1), L2SP(alpha=0.1, anchor="task_start")
    model_a, model_b = MLP(), MLP()
    after_first = {}
    for t in range(2):
        train_task(model_a, make_task(f"t{t}", t), pretrained, CONFIG)
        train_task(model_b, make_task(f"t{t}", t), task_start, CONFIG)
        if t == 0:
            after_first = weights(model_b)
    for name, w in start.items():
        assert torch.equal(pretrained.anchors[name], w), name
        assert torch.equal(task_start.anchors[name], after_first[name]), name
    assert any(not torch.equal(after_first[n], start[n]) for n in start)


def test_a_large_alpha_keeps_the_weights_near_the_anchor() -> None:
    start = weights(MLP())
    moved = {}
    for alpha in (0.0, 50.0):
        model = MLP()
        train_task(model, make_task("a", 0, n=64), L2SP(alpha=alpha), CONFIG)
        moved[alpha] = sum(float((p - start[n]).norm() ** 2) for n, p in weights(model).items())
    assert moved[50.0] < 0.2 * moved[0.0]


def test_offloaded_anchor_stays_on_cpu_and_gives_the_same_gradient() -> None:
    model = MLP()
    base, off = L2SP(alpha=0.5), L2SP(alpha=0.5, offload=True)
    base.on_task_start(model, make_task("a", 0))
    off.on_task_start(model, make_task("a", 0))
    perturb(model, 5)
    want = added_gradient(base, model, 1)
    got = added_gradient(off, model, 1)
    for name in want:
        assert off.anchors[name].device.type == "cpu"
        assert torch.equal(got[name], want[name])


def test_state_round_trip_continues_identically(tmp_path: Path) -> None:
    model = MLP()
    strategy = L2SP(alpha=0.5, storage_dtype="bfloat16")
    train_task(model, make_task("t0", 0), strategy, CONFIG)
    path = save_strategy_state(strategy, tmp_path / "l2sp.safetensors")
    resumed_model = copy.deepcopy(model)
    resumed = L2SP(alpha=0.5, storage_dtype="bfloat16")
    load_strategy_state(resumed, path)
    train_task(model, make_task("t1", 1), strategy, CONFIG)
    train_task(resumed_model, make_task("t1", 1), resumed, CONFIG)
    for name, w in weights(model).items():
        assert torch.equal(w, weights(resumed_model)[name]), name
        assert torch.equal(strategy.anchors[name], resumed.anchors[name])


def test_invalid_settings_raise_retain_errors() -> None:
    with pytest.raises(RetainError, match="alpha"):
        L2SP(alpha=-1.0)
    with pytest.raises(RetainError, match="anchor"):
        L2SP(anchor="start")  # type: ignore[arg-type]
    with pytest.raises(RetainError, match="storage_dtype"):
        L2SP(storage_dtype="float16")  # type: ignore[arg-type]
    with pytest.raises(RetainError, match="regular expression"):
        L2SP(params="(")
    with pytest.raises(RetainError, match="matches no"):
        L2SP(params="^decoder").on_task_start(MLP(), make_task("a", 0))
    with pytest.raises(RetainError, match="anchor='pretrained'"):
        L2SP(anchor="task_start").load_state_dict(L2SP().state_dict())


def test_registered_and_described() -> None:
    strategy = build_strategy("l2sp", alpha=0.2)
    assert isinstance(strategy, L2SP)
    assert strategy.describe() == (
        "l2sp(alpha=0.2, anchor='pretrained', params=None, storage_dtype='float32', offload=False)"
    )
