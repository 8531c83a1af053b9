"""Chains run hooks in order, prefix state keys, and refuse senseless combinations."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from retain.data.task import Task
from retain.errors import RetainError, UnknownNameError
from retain.strategies.base import Strategy, build_strategy
from retain.strategies.chain import Chain, chain
from retain.strategies.state import load_strategy_state, read_strategy_state, save_strategy_state


class Recorder(Strategy):
    """Appends ``(tag, hook)`` to a shared list; holds a tensor and a counter as state."""

    name = "recorder"

    def __init__(self, tag: str, calls: list[tuple[str, str]]) -> None:
        self.tag = tag
        self.calls = calls
        self.tensor = torch.arange(3.0)
        self.count = 0

    def after_backward(self, model: nn.Module) -> None:
        self.calls.append((self.tag, "after_backward"))

    def train_data(self, task: Task, model: nn.Module) -> Task:
        self.calls.append((self.tag, "train_data"))
        return task.with_examples([*task.examples, *task.examples])

    def state_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tensor, self.count = state["tensor"], state["count"]


class OtherRecorder(Recorder):
    """A second recorder under its own name (a chain refuses a name listed twice)."""

    name = "other_recorder"


def test_hooks_run_in_list_order_and_train_data_composes() -> None:
    calls: list[tuple[str, str]] = []
    both = Chain([Recorder("a", calls), OtherRecorder("b", calls)])
    task = Task("t", [{"x": torch.zeros(1)}])
    data = both.begin_task(nn.Linear(1, 1), task)
    both.after_backward(nn.Linear(1, 1))
    assert len(data.examples) == 4
    assert calls == [
        ("a", "train_data"),
        ("b", "train_data"),
        ("a", "after_backward"),
        ("b", "after_backward"),
    ]


def test_state_keys_are_prefixed_and_round_trip_through_safetensors(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []
    first = Chain([Recorder("a", calls), OtherRecorder("b", calls)])
    first.strategies[1].count = 7  # type: ignore[attr-defined]
    first.strategies[1].tensor = torch.tensor([5.0, 6.0])  # type: ignore[attr-defined]
    path = save_strategy_state(first, tmp_path / "state.safetensors")
    assert set(read_strategy_state(path)) == {
        "0.recorder.tensor",
        "0.recorder.count",
        "1.other_recorder.tensor",
        "1.other_recorder.count",
    }
    second = Chain([Recorder("a", calls), OtherRecorder("b", calls)])
    load_strategy_state(second, path)
    assert second.strategies[1].count == 7  # type: ignore[attr-defined]
    assert torch.equal(second.strategies[1].tensor, torch.tensor([5.0, 6.0]))  # type: ignore[attr-defined]
    assert not list(tmp_path.glob(".tmp-*"))


def test_state_from_another_chain_is_refused(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []
    path = save_strategy_state(Chain([Recorder("a", calls)]), tmp_path / "s.safetensors")
    with pytest.raises(RetainError, match="not this chain"):
        load_strategy_state(Chain([]), path)
    with pytest.raises(RetainError, match="does not exist"):
        load_strategy_state(Chain([]), tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_text("not a tensor file")
    with pytest.raises(RetainError, match="not a safetensors file"):
        read_strategy_state(tmp_path / "junk.safetensors")


def test_unknown_strategy_and_parameter_names_suggest_the_fix() -> None:
    with pytest.raises(UnknownNameError, match="did you mean 'ewc'"):
        build_strategy("ewcc")
    with pytest.raises(RetainError, match="did you mean 'strength'"):
        build_strategy("ewc", strenght=1.0)
    with pytest.raises(RetainError, match="has no 'name'"):
        chain({"alpha": 1.0})


def test_senseless_combinations_are_refused() -> None:
    with pytest.raises(RetainError, match="do not combine"):
        chain("progressive", "ewc")
    with pytest.raises(RetainError, match="listed twice"):
        chain("warmup", "warmup")
    with pytest.raises(RetainError, match="listed twice"):
        chain("ewc", {"name": "ewc", "strength": 5.0})


def test_a_skipped_prepare_is_refused_not_silently_ignored() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    task = Task("t", [{"x": torch.zeros(2)}])
    strategies = chain({"name": "freeze", "params": "0.weight"})
    with pytest.raises(RetainError, match=r"call model = strategies.prepare\(model\)"):
        strategies.begin_task(model, task)
    prepared = strategies.prepare(model)
    strategies.begin_task(prepared, task)
    # Read from the model, never from a mark: a copy of a prepared model and a DDP-style wrapper
    # holding it as `module` are prepared, for a fresh strategy too.
    fresh = chain({"name": "freeze", "params": "0.weight"})
    fresh.begin_task(copy.deepcopy(prepared), task)
    wrapper = nn.Module()
    wrapper.module = prepared
    fresh.begin_task(wrapper, task)
    prepared[0].weight.requires_grad_(True)  # undone by hand: no longer what prepare made
    with pytest.raises(RetainError, match="prepare"):
        fresh.begin_task(prepared, task)
    assert "_retain" not in " ".join(vars(prepared))  # nothing stamped into the model
    with pytest.raises(RetainError, match="as a string"):
        build_strategy({"name": "ewc"})  # type: ignore[arg-type]


def test_penalties_add_up() -> None:
    class Const(Strategy):
        name = "const"

        def __init__(self, value: float) -> None:
            self.value = value

        def penalty(self, model: nn.Module) -> torch.Tensor:
            return torch.tensor(self.value)

    class OtherConst(Const):
        name = "other_const"

    total = Chain([Const(1.5), OtherConst(2.0)]).penalty(nn.Linear(1, 1))
    assert total is not None
    assert total.item() == pytest.approx(3.5)
    assert Chain([]).penalty(nn.Linear(1, 1)) is None


def test_state_loaded_into_another_order_names_the_order(tmp_path: Path) -> None:
    calls: list[tuple[str, str]] = []
    path = save_strategy_state(
        Chain([Recorder("a", calls), OtherRecorder("b", calls)]), tmp_path / "s.safetensors"
    )
    with pytest.raises(RetainError, match=r"order \['recorder', 'other_recorder'\]"):
        load_strategy_state(Chain([OtherRecorder("b", calls), Recorder("a", calls)]), path)
