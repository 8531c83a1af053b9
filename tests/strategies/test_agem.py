"""A-GEM: the projection against a closed-form reference gradient, no side effects, state, ranks."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

from retain.data.task import Example, Task
from retain.errors import RetainError
from retain.strategies.agem import AGEM
from retain.strategies.state import load_strategy_state, save_strategy_state
from retain.training.loop import TrainConfig, train_task


def examples(n: int, seed: int, width: int = 4) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return [{"x": x[i], "labels": y[i]} for i in range(n)]


class Linear(nn.Module):
    """Softmax regression, whose loss gradient has a closed form."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)  # type: ignore[no-any-return]


def closed_form_gradient(model: Linear, memory: list[Example]) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy gradient of softmax regression: ``((P − Y)ᵀ X / N, mean(P − Y))``."""
    x = torch.stack([ex["x"] for ex in memory])
    y = functional.one_hot(torch.stack([ex["labels"] for ex in memory]), 3).float()
    with torch.no_grad():
        p = torch.softmax(x @ model.fc.weight.T + model.fc.bias, dim=1)
    return (p - y).T @ x / len(memory), (p - y).mean(dim=0)


def with_memory(memory: list[Example], sample_size: int = 64) -> tuple[Linear, AGEM]:
    model = Linear()
    strategy = AGEM(memory_size=16, sample_size=sample_size)
    strategy.on_task_end(model, Task("old", memory))
    return model, strategy


def test_conflicting_gradient_is_projected_onto_the_closed_form() -> None:
    memory = examples(6, seed=1)
    model, strategy = with_memory(memory)
    ref_w, ref_b = closed_form_gradient(model, memory)
    noise = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    g = -2.0 * ref_w + 0.3 * noise  # conflicts with the memory gradient
    assert float((g * ref_w).sum()) < 0
    model.fc.weight.grad = g.clone()  # the bias has no gradient: it must stay without one
    strategy.after_backward(model)
    expected = g - (g * ref_w).sum() / (ref_w * ref_w).sum() * ref_w
    new = model.fc.weight.grad
    assert new is not None
    assert model.fc.bias.grad is None
    assert torch.allclose(new, expected, atol=1e-6, rtol=0)
    assert float((new * ref_w).sum()) >= -1e-6
    assert strategy.projections == 1
    assert strategy.steps == 1

    # with both gradients the dot products run over the concatenated vector
    gb = -ref_b + 0.1
    model.fc.weight.grad, model.fc.bias.grad = g.clone(), gb.clone()
    strategy.after_backward(model)
    dot = (g * ref_w).sum() + (gb * ref_b).sum()
    norm = (ref_w * ref_w).sum() + (ref_b * ref_b).sum()
    assert torch.allclose(model.fc.weight.grad, g - dot / norm * ref_w, atol=1e-6, rtol=0)
    assert torch.allclose(model.fc.bias.grad, gb - dot / norm * ref_b, atol=1e-6, rtol=0)
    assert strategy.projections == 2


def test_agreeing_gradient_is_left_unchanged() -> None:
    memory = examples(6, seed=1)
    model, strategy = with_memory(memory)
    ref_w, _ = closed_form_gradient(model, memory)
    g = ref_w + 0.3 * torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    assert float((g * ref_w).sum()) >= 0
    model.fc.weight.grad = g.clone()
    strategy.after_backward(model)
    assert torch.equal(model.fc.weight.grad, g)
    assert model.fc.bias.grad is None
    assert strategy.projections == 0
    assert strategy.steps == 1
    assert model.training  # the memory pass ran in the current mode and left it


def test_memory_size_zero_trains_exactly_like_plain_fine_tuning() -> None:
    plain = Linear()
    agem = copy.deepcopy(plain)
    config = TrainConfig(lr=0.1, batch_size=4, optimizer="sgd")
    strategy = AGEM(memory_size=0)
    for t in range(2):
        task = Task(f"t{t}", examples(12, seed=t))
        train_task(plain, task, None, config)
        train_task(agem, task, strategy, config)
    for a, b in zip(plain.parameters(), agem.parameters(), strict=True):
        assert torch.equal(a, b)
    assert strategy.steps == 0


def test_training_with_a_memory_projects_some_steps() -> None:
    model = Linear()
    strategy = AGEM(memory_size=8, sample_size=4)
    config = TrainConfig(lr=0.5, batch_size=4, optimizer="sgd")
    train_task(model, Task("a", examples(16, seed=0)), strategy, config)
    assert strategy.steps == 0  # no memory during the first task
    flipped = [{"x": ex["x"], "labels": (ex["labels"] + 1) % 3} for ex in examples(16, seed=0)]
    train_task(model, Task("b", flipped), strategy, config)  # conflicts with task a
    assert strategy.steps == 4
    assert strategy.projections > 0


def test_state_round_trip_continues_identically(tmp_path: Path) -> None:
    model, first = with_memory(examples(20, seed=1), sample_size=4)
    first.projections = 3
    path = save_strategy_state(first, tmp_path / "agem.safetensors")
    second = AGEM(memory_size=16, sample_size=4)
    load_strategy_state(second, path)
    assert second.projections == 3
    assert second.memory is not None
    assert first.memory is not None
    for a, b in zip(first.memory.examples, second.memory.examples, strict=True):
        assert torch.equal(a["x"], b["x"])
        assert torch.equal(a["labels"], b["labels"])
    second.on_task_start(model, Task("next", examples(4, seed=9)))  # objective after a resume
    g = torch.Generator().manual_seed(4)
    for _ in range(5):  # successive memory batches are drawn identically
        grad = torch.randn(3, 4, generator=g)
        results = []
        for strategy in (first, second):
            model.fc.weight.grad = grad.clone()
            strategy.after_backward(model)
            results.append(model.fc.weight.grad.clone())
        assert torch.equal(results[0], results[1])
    assert first.projections == second.projections > 3


def test_reference_every_k_steps_reuses_one_reference_and_survives_a_round_trip(
    tmp_path: Path,
) -> None:
    memory = examples(6, seed=1)
    model, every = with_memory(memory)
    every.reference_every = 3
    ref_w, _ = closed_form_gradient(model, memory)  # the reference at the first step's weights
    g = torch.Generator().manual_seed(5)
    grads = [-ref_w + 0.1 * torch.randn(3, 4, generator=g) for _ in range(5)]
    for step, grad in enumerate(grads):
        if step == 2:  # a checkpoint in the middle of a cycle: the reference travels with it
            path = save_strategy_state(every, tmp_path / "agem.safetensors")
            resumed = AGEM(memory_size=16, sample_size=64, reference_every=3)
            load_strategy_state(resumed, path)
            resumed.on_task_start(model, Task("next", memory))
        model.fc.weight.grad = grad.clone()
        every.after_backward(model)
        if step < 3:  # steps 0, 1, 2 project off the reference of step 0's weights
            expected = grad - (grad * ref_w).sum() / (ref_w * ref_w).sum() * ref_w
            assert torch.allclose(model.fc.weight.grad, expected, atol=1e-6, rtol=0), step
        if step == 2:
            model.fc.weight.grad = grad.clone()
            resumed.after_backward(model)
            assert torch.allclose(model.fc.weight.grad, expected, atol=1e-6, rtol=0)
        with torch.no_grad():
            model.fc.weight[0].add_(0.3)  # the weights move: a fresh reference would differ
    fresh, _ = closed_form_gradient(model, memory)
    assert not torch.allclose(fresh, ref_w, atol=1e-3)  # step 3 drew a new one
    assert every.steps == 5
    with pytest.raises(RetainError, match="reference_every"):
        AGEM(reference_every=0)


def test_tasks_that_cannot_share_a_memory_batch_are_refused() -> None:
    _, strategy = with_memory(examples(4, seed=1))
    with pytest.raises(RetainError, match="keys"):
        strategy.on_task_end(Linear(), Task("other", [{"y": torch.zeros(4)}]))
    model, strategy = with_memory(examples(4, seed=1))
    strategy.on_task_end(model, Task("wider", examples(4, seed=2, width=5)))
    model.fc.weight.grad = torch.ones(3, 4)
    with pytest.raises(RetainError, match="pad_collate"):
        strategy.after_backward(model)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(RetainError, match="memory_size"):
        AGEM(memory_size=-1)
    with pytest.raises(RetainError, match="sample_size"):
        AGEM(sample_size=0)
    with pytest.raises(RetainError, match="selection"):
        AGEM(selection="fifo")  # type: ignore[arg-type]


WORKER = textwrap.dedent(
    """
    import sys, torch
    from retain.data.task import Task
    from retain.strategies.agem import AGEM
    rank, folder = int(sys.argv[1]), sys.argv[2]
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2
    )
    setup = torch.load(f"{folder}/setup.pt")

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x)

    model = Linear()
    model.load_state_dict(setup["model"])
    strategy = AGEM(memory_size=8, sample_size=8)
    strategy.on_task_end(model, Task("mine", setup["memories"][rank]))
    model.fc.weight.grad = setup["grad"].clone()
    strategy.after_backward(model)
    torch.save(model.fc.weight.grad, f"{folder}/grad{rank}.pt")
    torch.distributed.destroy_process_group()
    """
)


def test_ranks_project_against_the_rank_averaged_reference(tmp_path: Path) -> None:
    model = Linear()
    memories = [examples(5, seed=10), examples(5, seed=11)]
    refs = [closed_form_gradient(model, m)[0] for m in memories]
    mean = (refs[0] + refs[1]) / 2
    grad = -mean + 0.5 * refs[0]  # conflicts with the average of the two memories
    assert float((grad * mean).sum()) < 0
    torch.save(
        {"model": model.state_dict(), "memories": memories, "grad": grad},
        tmp_path / "setup.pt",
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(rank), str(tmp_path)])
        for rank in (0, 1)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    expected = grad - (grad * mean).sum() / (mean * mean).sum() * mean
    for rank in (0, 1):
        assert torch.allclose(torch.load(tmp_path / f"grad{rank}.pt"), expected, atol=1e-6, rtol=0)
