"""EWC: R(θ) = λ/2 Σ_t Σ_i F_{t,i} (θ_i − θ*_{t,i})², checked against autograd, a closed-form
Fisher, and saved/loaded copies of itself."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

from retain.data.task import Task
from retain.errors import RetainError
from retain.strategies import anchored
from retain.strategies.base import build_strategy
from retain.strategies.ewc import EWC
from retain.strategies.state import load_strategy_state, save_strategy_state
from retain.training.loop import TrainConfig, train_task

CONFIG = TrainConfig(lr=0.05, batch_size=8, shuffle=False)


class MLP(nn.Module):
    """A two-layer classifier whose forward takes ``x`` (as the Classification objective calls)."""

    def __init__(self, seed: int = 0, hidden: int = 7) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Linear(5, hidden)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(torch.tanh(self.body(x)))
        return out


class Softmax(nn.Module):
    """Linear softmax regression: per-sample gradients have a closed form."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(x)
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


def random_fisher(model: nn.Module, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) + 0.01 for n, p in model.named_parameters()}


def added_gradient(strategy: EWC, model: nn.Module, seed: int) -> dict[str, Tensor]:
    """What ``after_backward`` adds to random existing gradients."""
    g = torch.Generator().manual_seed(seed)
    before = {}
    for n, p in model.named_parameters():
        p.grad = torch.randn(p.shape, generator=g)
        before[n] = p.grad.clone()
    strategy.after_backward(model)
    return {n: p.grad - before[n] for n, p in model.named_parameters() if p.grad is not None}


def two_tasks(strategy: EWC, model: nn.Module, seed: int) -> list[dict[str, Tensor]]:
    """Consolidate two random Fishers at two different weights; returns the Fishers."""
    fishers = [random_fisher(model, seed), random_fisher(model, seed + 1)]
    strategy.consolidate(model, fishers[0])
    perturb(model, seed + 10)
    strategy.consolidate(model, fishers[1])
    perturb(model, seed + 20)
    return fishers


@pytest.mark.parametrize("storage_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("mode", "gamma"), [("separate", 1.0), ("online", 0.5)])
@pytest.mark.parametrize("seed", range(3))
def test_gradient_equals_autograd_of_the_penalty(
    storage_dtype: str, mode: str, gamma: float, seed: int
) -> None:
    model = MLP(seed)
    strength = [1.0, 30.0, 1000.0][seed]
    strategy = EWC(strength=strength, mode=mode, gamma=gamma, storage_dtype=storage_dtype)  # type: ignore[arg-type]
    two_tasks(strategy, model, seed)
    assert len(strategy.terms) == (2 if mode == "separate" else 1)
    params = dict(model.named_parameters())
    penalty = strategy.penalty(model)
    expected = torch.autograd.grad(penalty, list(params.values()))
    added = added_gradient(strategy, model, seed)
    reference = 0.0
    for (name, p), want in zip(params.items(), expected, strict=True):
        # Independent reference from the stored (possibly bfloat16) values.
        direct = torch.zeros_like(p)
        for t in strategy.terms:
            assert t.weight is not None
            direct += t.weight[name].float() * (p.detach() - t.anchor[name].float())
        assert torch.allclose(want, strength * direct, atol=1e-6 * strength, rtol=1e-5)
        assert torch.allclose(added[name], want, atol=1e-6, rtol=1e-6), name
        for t in strategy.terms:
            assert t.weight is not None
            diff = p.detach() - t.anchor[name].float()
            reference += float((t.weight[name].float() * diff**2).sum())
    assert penalty.item() == pytest.approx(0.5 * strength * reference, rel=1e-5)


@pytest.mark.parametrize("storage_dtype", ["float32", "bfloat16"])
def test_split_tensors_give_the_same_gradient(
    storage_dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = MLP()
    whole, cut = (EWC(strength=9.0, storage_dtype=storage_dtype) for _ in range(2))  # type: ignore[arg-type]
    two_tasks(whole, model, 0)
    cut.load_state_dict(whole.state_dict())
    want = added_gradient(whole, model, 1)
    monkeypatch.setitem(anchored.CHUNK_NUMEL, "cpu", 6)
    got = added_gradient(cut, model, 1)
    assert all(torch.equal(got[n], want[n]) for n in want)


def test_online_mode_decays_and_reanchors() -> None:
    model = MLP()
    strategy = EWC(mode="online", gamma=0.5)
    first, second = random_fisher(model, 0), random_fisher(model, 1)
    strategy.consolidate(model, first)
    perturb(model, 2)
    strategy.consolidate(model, second)
    (term,) = strategy.terms
    assert term.weight is not None
    for name, p in model.named_parameters():
        assert torch.allclose(term.weight[name], 0.5 * first[name] + second[name])
        assert torch.equal(term.anchor[name], p.detach())


def test_online_memory_is_constant_and_separate_grows() -> None:
    counts: dict[str, list[int]] = {"online": [], "separate": []}
    for mode in counts:
        model = MLP()
        strategy = EWC(mode=mode, gamma=0.9)  # type: ignore[arg-type]
        for t in range(3):
            strategy.consolidate(model, random_fisher(model, t))
            perturb(model, t)
            counts[mode].append(strategy._store.num_tensors)
    n_params = len(list(MLP().parameters()))
    assert counts["online"] == [2 * n_params] * 3
    assert counts["separate"] == [2 * n_params, 4 * n_params, 6 * n_params]


def closed_form_fisher(model: Softmax, task: Task, n: int) -> dict[str, Tensor]:
    """Empirical Fisher of softmax regression.

    Per sample, ∂loss_n/∂W = (p_n − y_n) x_nᵀ and ∂loss_n/∂b = p_n − y_n.
    """
    x = torch.stack([task.examples[i]["x"] for i in range(n)])
    y = torch.stack([task.examples[i]["labels"] for i in range(n)])
    with torch.no_grad():
        e = torch.softmax(x @ model.fc.weight.T + model.fc.bias, dim=1) - functional.one_hot(y, 3)
    return {
        "fc.weight": (e[:, :, None] * x[:, None, :]).square().mean(0),
        "fc.bias": e.square().mean(0),
    }


def test_stored_fisher_matches_the_closed_form_of_softmax_regression() -> None:
    model, task = Softmax(), make_task("a", 3, n=12)
    train_task(model, task, None, CONFIG)  # away from the initialisation
    strategy = EWC(fisher_samples=9, fisher_batch_size=4)
    strategy.on_task_end(model, task)
    expected = closed_form_fisher(model, task, 9)
    (term,) = strategy.terms
    assert term.weight is not None
    for name, want in expected.items():
        assert torch.allclose(term.weight[name], want, atol=1e-6, rtol=1e-5), name
        assert torch.equal(term.anchor[name], dict(model.named_parameters())[name].detach())


def test_batch_estimator_is_passed_through() -> None:
    model, task = Softmax(), make_task("a", 3, n=8)
    strategy = EWC(fisher="batch", fisher_samples=None, fisher_batch_size=8)
    strategy.on_task_end(model, task)
    x = torch.stack([ex["x"] for ex in task.examples])
    y = torch.stack([ex["labels"] for ex in task.examples])
    with torch.no_grad():
        e = torch.softmax(model(x), dim=1) - functional.one_hot(y, 3)
    (term,) = strategy.terms
    assert term.weight is not None
    assert torch.allclose(term.weight["fc.bias"], e.mean(0).square(), atol=1e-7)


def test_frozen_parameters_are_not_protected() -> None:
    model = MLP()
    model.body.weight.requires_grad_(False)
    strategy = EWC(fisher_samples=8)
    strategy.on_task_end(model, make_task("a", 0))
    assert sorted(strategy.terms[0].anchor) == ["body.bias", "head.bias", "head.weight"]


@pytest.mark.parametrize("normalize", ["max", "mean"])
def test_normalized_fisher(normalize: str) -> None:
    model = MLP()
    strategy = EWC(normalize=normalize)  # type: ignore[arg-type]
    fisher = {n: 7.0 * f for n, f in random_fisher(model, 0).items()}
    strategy.consolidate(model, fisher)
    assert strategy.terms[0].weight is not None
    stored = torch.cat([f.flatten() for f in strategy.terms[0].weight.values()])
    raw = torch.cat([f.flatten() for f in fisher.values()])
    value = stored.max() if normalize == "max" else stored.mean()
    assert value.item() == pytest.approx(1.0, rel=1e-6)
    assert torch.allclose(stored * (raw.max() if normalize == "max" else raw.mean()), raw)


def test_strength_zero_trains_exactly_like_no_strategy() -> None:
    plain, regularised = MLP(), MLP()
    strategy = EWC(strength=0.0, fisher_samples=8)
    for t in range(2):
        train_task(plain, make_task(f"t{t}", t), None, CONFIG)
        train_task(regularised, make_task(f"t{t}", t), strategy, CONFIG)
    assert len(strategy.terms) == 2
    for name, w in weights(plain).items():
        assert torch.equal(w, weights(regularised)[name]), name


def test_a_large_strength_keeps_the_weights_near_the_first_task() -> None:
    drift = {}
    for strength in (0.0, 1000.0):
        model = MLP()
        strategy = EWC(strength=strength, fisher_samples=None)
        train_task(model, make_task("t0", 0, n=64), strategy, CONFIG)
        anchor = strategy.terms[0].anchor
        train_task(model, make_task("t1", 1, n=64), strategy, CONFIG)
        drift[strength] = sum(float((p - anchor[n]).norm() ** 2) for n, p in weights(model).items())
    assert drift[1000.0] < 0.5 * drift[0.0]


@pytest.mark.parametrize("storage_dtype", ["float32", "bfloat16"])
def test_state_round_trip_continues_identically(storage_dtype: str, tmp_path: Path) -> None:
    model = MLP()
    settings = {"strength": 100.0, "fisher_samples": 8, "storage_dtype": storage_dtype}
    strategy = EWC(**settings)  # type: ignore[arg-type]
    for t in range(2):
        train_task(model, make_task(f"t{t}", t), strategy, CONFIG)
    path = save_strategy_state(strategy, tmp_path / "ewc.safetensors")
    resumed_model = copy.deepcopy(model)
    resumed = EWC(**settings)  # type: ignore[arg-type]
    load_strategy_state(resumed, path)
    assert resumed.state_dict()["num_tasks"] == 2
    train_task(model, make_task("t2", 2), strategy, CONFIG)
    train_task(resumed_model, make_task("t2", 2), resumed, CONFIG)
    for name, w in weights(model).items():
        assert torch.equal(w, weights(resumed_model)[name]), name
    for a, b in zip(strategy.terms, resumed.terms, strict=True):
        assert a.weight is not None
        assert b.weight is not None
        assert all(torch.equal(a.weight[n], b.weight[n]) for n in a.weight)


def test_fisher_file_round_trip_and_model_check(tmp_path: Path) -> None:
    model = MLP()
    strategy = EWC(strength=3.0, mode="separate")
    two_tasks(strategy, model, 0)
    path = strategy.save_fisher(tmp_path / "fisher.safetensors")
    loaded = EWC(strength=3.0)
    loaded.load_fisher(path, model)
    assert loaded.state_dict()["num_tasks"] == 2
    want, got = added_gradient(strategy, model, 0), added_gradient(loaded, model, 0)
    assert all(torch.equal(got[n], want[n]) for n in want)
    with pytest.raises(RetainError, match=r"different model.*'body\.weight'"):
        EWC().load_fisher(path, MLP(hidden=9))
    with pytest.raises(RetainError, match="mode='separate'"):
        EWC(mode="online").load_fisher(path, model)
    head_only = EWC(params=r"^head\.")
    head_only.load_fisher(path, model)
    assert all(set(t.anchor) == {"head.weight", "head.bias"} for t in head_only.terms)


def test_offloaded_storage_stays_on_cpu_and_gives_the_same_gradient() -> None:
    model = MLP()
    base, off = EWC(strength=5.0), EWC(strength=5.0, offload=True)
    fisher = random_fisher(model, 0)
    base.consolidate(model, fisher)
    off.consolidate(model, fisher)
    perturb(model, 1)
    want, got = added_gradient(base, model, 2), added_gradient(off, model, 2)
    for name in want:
        assert all(t.device.type == "cpu" for t in off._store.terms[0].tensors())
        assert torch.equal(got[name], want[name])


def test_invalid_settings_raise_retain_errors() -> None:
    with pytest.raises(RetainError, match="strength"):
        EWC(strength=-1.0)
    for gamma in (0.0, 1.5):
        with pytest.raises(RetainError, match="gamma"):
            EWC(gamma=gamma)
    with pytest.raises(RetainError, match="normalize"):
        EWC(normalize="sum")  # type: ignore[arg-type]
    with pytest.raises(RetainError, match="matches no"):
        EWC(params="^decoder").on_task_start(MLP(), make_task("a", 0))
    with pytest.raises(RetainError, match="no Fisher to save"):
        EWC().save_fisher("unused.safetensors")
    with pytest.raises(RetainError, match="mode='separate'"):
        EWC(mode="online").load_state_dict(EWC().state_dict())


def test_registered() -> None:
    assert isinstance(build_strategy("ewc", strength=2.0, mode="online"), EWC)
