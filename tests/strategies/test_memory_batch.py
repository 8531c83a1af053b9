"""A-GEM's fast path equals the straightforward computation: projection, memory batches, runs."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from retain.data.task import Example, Task, stack_collate
from retain.strategies.agem import AGEM
from retain.strategies.memory_batch import StackedMemory, draw_index, project
from retain.strategies.replay_buffer import draw
from retain.training.loop import TrainConfig, train_task


def test_projection_matches_the_formula_on_a_hand_made_gradient() -> None:
    g = [torch.tensor([1.0, 0.0]), torch.tensor([[2.0, -1.0]])]
    ref = [torch.tensor([-1.0, 1.0]), torch.tensor([[-1.0, 0.5]])]
    flat_g, flat_r = torch.cat([t.reshape(-1) for t in g]), torch.cat([t.reshape(-1) for t in ref])
    dot = flat_g @ flat_r  # -1 - 2 - 0.5 = -3.5 < 0: conflicting
    expected = flat_g - dot / (flat_r @ flat_r) * flat_r
    assert project(g, ref)
    got = torch.cat([t.reshape(-1) for t in g])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)
    assert abs(float(got @ flat_r)) < 1e-6  # no first-order rise of the memory loss


def test_agreeing_gradient_is_left_alone() -> None:
    g, ref = [torch.tensor([1.0, 2.0])], [torch.tensor([0.5, 0.0])]
    assert not project(g, ref)
    assert g[0].tolist() == [1.0, 2.0]


def test_worked_example_of_the_docstring() -> None:
    g = [torch.tensor([1.0, 0.0])]
    assert project(g, [torch.tensor([-1.0, 1.0])])
    torch.testing.assert_close(g[0], torch.tensor([0.5, 0.5]))


def test_bf16_gradient_is_projected_with_float32_dot_products() -> None:
    g = [torch.tensor([1.0, 0.0], dtype=torch.bfloat16)]
    assert project(g, [torch.tensor([-1.0, 1.0])])
    assert g[0].dtype == torch.bfloat16
    assert g[0].tolist() == [0.5, 0.5]


def pool(n: int) -> list[Example]:
    g = torch.Generator().manual_seed(3)
    return [{"x": torch.randn(4, generator=g), "labels": torch.tensor(i % 3)} for i in range(n)]


def test_stacked_memory_batches_equal_collated_draws() -> None:
    examples, stacked = pool(20), StackedMemory()
    for k in (5, 20, 30):  # without replacement, all of it, with replacement
        a, b = torch.Generator().manual_seed(k), torch.Generator().manual_seed(k)
        batch = stacked.batch(examples, stack_collate, draw_index(len(examples), k, a))
        expected = stack_collate(draw(examples, k, b))
        assert batch is not None
        assert batch.keys() == expected.keys()
        for key in batch:
            assert torch.equal(batch[key], expected[key])


def test_stacked_memory_declines_other_collates_and_ragged_examples() -> None:
    stacked, index = StackedMemory(), torch.tensor([0, 1])
    assert stacked.batch(pool(4), lambda e: stack_collate(e), index) is None
    ragged: list[Example] = [{"x": torch.zeros(2)}, {"x": torch.zeros(3)}]
    assert stacked.batch(ragged, stack_collate, index) is None


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)  # type: ignore[no-any-return]


def test_agem_run_is_identical_with_and_without_the_stacked_memory() -> None:
    old = Task("old", pool(24))
    new = Task("new", [{**ex, "x": -2 * ex["x"]} for ex in pool(32)])
    torch.manual_seed(0)
    start = Linear()
    models, counts = [], []
    for collate in (stack_collate, lambda e: stack_collate(e)):  # fast path, then per-step
        model, strategy = copy.deepcopy(start), AGEM(memory_size=16, sample_size=8)
        strategy.on_task_end(model, Task("old", old.examples, collate=collate))
        config = TrainConfig(lr=0.1, batch_size=4, max_steps=12, optimizer="sgd")
        train_task(model, Task("new", new.examples, collate=collate), strategy, config)
        models.append(model)
        counts.append((strategy.steps, strategy.projections))
    assert counts[0] == counts[1]
    assert counts[0][1] > 0
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
