"""MAS: the importance equals its closed form, uses no labels, and accumulates as the paper does."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from retain.data.task import CausalLM, Task
from retain.errors import RetainError
from retain.strategies.base import build_strategy, tunable_strategies
from retain.strategies.chain import chain
from retain.strategies.mas import MAS, output_sensitivity


class Linear(nn.Module):
    """``f(x) = Wx + b``: ``∂‖f‖²/∂W = 2 f xᵀ`` and ``∂‖f‖²/∂b = 2 f`` per sample."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(x)
        return out


def make_task(seed: int, n: int = 12, labels: int | None = None) -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g) if labels is None else torch.full((n,), labels)
    return Task(f"t{seed}", [{"x": x[i], "labels": y[i]} for i in range(n)])


def closed_form(model: Linear, task: Task) -> dict[str, Tensor]:
    x = torch.stack([e["x"] for e in task.examples]).double()
    w, b = model.fc.weight.detach().double(), model.fc.bias.detach().double()
    f = x @ w.T + b  # [N, 3]
    grad_w = 2 * f[:, :, None] * x[:, None, :]  # [N, 3, 5]
    return {"fc.weight": grad_w.abs().mean(0).float(), "fc.bias": (2 * f).abs().mean(0).float()}


@pytest.mark.parametrize("batch_size", [1, 5, 32])
def test_importance_is_the_mean_absolute_gradient_of_the_squared_output_norm(
    batch_size: int,
) -> None:
    model, task = Linear(), make_task(0)
    got = output_sensitivity(model, task, dict(model.named_parameters()), batch_size=batch_size)
    want = closed_form(model, task)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
    # |mean| would be smaller: the importance is the mean of per-sample absolute values
    x = torch.stack([e["x"] for e in task.examples])
    f = model(x).detach()
    assert float((2 * f).mean(0).abs().sum()) < float(got["fc.bias"].sum())


def test_labels_are_not_used() -> None:
    model = Linear()
    params = dict(model.named_parameters())
    a = output_sensitivity(model, make_task(3, labels=0), params)
    b = output_sensitivity(model, make_task(3, labels=2), params)
    for name in a:
        assert torch.equal(a[name], b[name])


def test_a_sequence_counts_only_its_target_positions() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Embedding(11, 4)

        def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
            out: Tensor = self.embed(input_ids)  # logits over 4 "words"
            return out

    model = Tokens()
    ids = torch.tensor([1, 2, 3, 4])
    masked = torch.tensor([-100, -100, 3, 4])  # only the last two positions are targets
    task = Task("seq", [{"input_ids": ids, "labels": masked}], objective=CausalLM())
    got = output_sensitivity(model, task, dict(model.named_parameters()))["embed.weight"]
    # shifted: logits at positions 1 and 2 (tokens 2, 3) predict the targets 3 and 4
    want = torch.zeros(11, 4)
    for token in (2, 3):
        want[token] = (2 * model.embed.weight[token].detach()).abs() / 2
    torch.testing.assert_close(got, want)


def test_online_mode_sums_the_importances_at_the_latest_weights() -> None:
    model, strategy = Linear(), MAS(strength=1.0)
    first, second = make_task(1), make_task(2)
    strategy.on_task_end(model, first)
    omega1 = closed_form(model, first)
    with torch.no_grad():
        model.fc.weight.add_(0.3)
    strategy.on_task_end(model, second)
    omega2 = closed_form(model, second)
    (term,) = strategy.terms
    assert term.weight is not None
    torch.testing.assert_close(term.weight["fc.weight"], omega1["fc.weight"] + omega2["fc.weight"])
    assert torch.equal(term.anchor["fc.weight"], model.fc.weight.detach())


def test_mas_is_declared_tunable_and_refuses_progressive_by_its_own_declaration() -> None:
    assert "mas" in tunable_strategies()
    with pytest.raises(RetainError, match="'mas' and 'progressive' do not combine"):
        chain("mas", "progressive")
    with pytest.raises(RetainError, match="mas samples must be >= 1"):
        build_strategy("mas", samples=0)
