"""Experience replay: the buffer's selection, the exact mix, overlap checks, state and bad input."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from retain.data.task import CausalLM, Example, Task, pad_collate
from retain.errors import RetainError
from retain.strategies.base import build_strategy
from retain.strategies.replay import Replay
from retain.strategies.replay_buffer import ReplayBuffer
from retain.strategies.state import load_strategy_state, read_strategy_state, save_strategy_state
from retain.training.loop import TrainConfig, train_task


def stream(n: int, start: int = 0) -> list[Example]:
    """Examples ``{"x": i}`` whose value identifies them."""
    return [{"x": torch.tensor(i)} for i in range(start, start + n)]


def ids(examples: list[Example]) -> list[int]:
    return [int(ex["x"]) for ex in examples]


def labelled(labels: list[int]) -> list[Example]:
    return [{"x": torch.tensor(i), "labels": torch.tensor(y)} for i, y in enumerate(labels)]


def mlp_task(name: str, n: int, seed: int) -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return Task(name, [{"x": x[i], "labels": y[i]} for i in range(n)])


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def test_reservoir_holds_every_example_with_equal_probability() -> None:
    # Algorithm R: after a stream of 20 (offered in three chunks, as three tasks would be), each
    # example is held with probability 5/20. 2000 fixed seeds: the binomial sd is 0.0097, the
    # tolerance 0.04 is over 4 sd, and the seeds are fixed, so the test cannot flake.
    hits: Counter[int] = Counter()
    runs = 2000
    for seed in range(runs):
        buffer = ReplayBuffer(5, "reservoir", seed=seed)
        buffer.add(stream(3))
        buffer.add(stream(9, start=3))
        buffer.add(stream(8, start=12))
        held = ids(buffer.examples)
        assert len(held) == 5
        assert len(set(held)) == 5
        hits.update(held)
    assert buffer.seen == 20
    assert sorted(hits) == list(range(20))
    for i in range(20):
        assert abs(hits[i] / runs - 0.25) <= 0.04, (i, hits[i] / runs)


def test_reservoir_holds_a_uniformly_random_subset() -> None:
    # Stream 6, size 2: each of the 15 pairs is held with probability 1/15 (sd 0.0046 over 3000
    # fixed seeds; tolerance 0.02).
    pairs: Counter[tuple[int, ...]] = Counter()
    for seed in range(3000):
        buffer = ReplayBuffer(2, "reservoir", seed=seed)
        buffer.add(stream(2))
        buffer.add(stream(4, start=2))
        pairs[tuple(sorted(ids(buffer.examples)))] += 1
    assert len(pairs) == 15
    for pair, count in pairs.items():
        assert abs(count / 3000 - 1 / 15) <= 0.02, (pair, count)


def test_reservoir_is_deterministic_for_a_seed() -> None:
    def held(seed: int) -> list[int]:
        buffer = ReplayBuffer(6, "reservoir", seed=seed)
        buffer.add(stream(50))
        return ids(buffer.examples)

    assert held(3) == held(3)
    assert held(3) != held(4)
    small = ReplayBuffer(10, "reservoir")
    small.add(stream(4))
    assert ids(small.examples) == [0, 1, 2, 3]  # a stream shorter than the buffer is kept whole


def test_class_balanced_counts_differ_by_at_most_one() -> None:
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        classes = int(torch.randint(2, 6, (1,), generator=g))
        capacity = int(torch.randint(classes, 25, (1,), generator=g))
        # every class has at least `capacity` examples, in a shuffled, imbalanced stream
        sizes = torch.randint(capacity, 3 * capacity, (classes,), generator=g).tolist()
        labels = [c for c, size in enumerate(sizes) for _ in range(size)]
        order = torch.randperm(len(labels), generator=g).tolist()
        buffer = ReplayBuffer(capacity, "class_balanced", seed=seed)
        buffer.add(labelled([labels[i] for i in order[: len(order) // 2]]))
        buffer.add(labelled([labels[i] for i in order[len(order) // 2 :]]))
        counts = Counter(int(ex["labels"]) for ex in buffer.examples)
        assert len(buffer) == capacity
        assert sorted(counts) == list(range(classes))
        assert max(counts.values()) - min(counts.values()) <= 1, (seed, counts)
        assert buffer.counts() == dict(sorted(counts.items()))


def test_class_balanced_keeps_a_rare_class_whole() -> None:
    buffer = ReplayBuffer(12, "class_balanced", seed=1)
    buffer.add(labelled([0] * 40 + [1] * 2 + [2] * 30))
    assert buffer.counts() == {0: 5, 1: 2, 2: 5}


def test_mix_appends_exactly_k_replayed_examples() -> None:
    replay = Replay(ratio=0.25, buffer_size=8)
    replay.on_task_end(nn.Linear(1, 1), Task("old", stream(30, start=100)))
    task = Task("new", stream(10))
    replay.on_task_start(nn.Linear(1, 1), task)
    data = replay.train_data(task, nn.Linear(1, 1))
    k = round(10 * 0.25 / 0.75)
    assert len(data.examples) == 10 + k == 13
    assert [data.examples[i] for i in range(10)] == list(task.examples)
    tail = ids([data.examples[i] for i in range(10, 13)])
    assert len(set(tail)) == k  # k <= buffer size: drawn without replacement
    assert set(tail) <= set(ids(replay.buffer.examples))
    again = replay.train_data(task, nn.Linear(1, 1))  # the same task again (a resume): same mix
    assert ids(list(again.examples)) == ids(list(data.examples))

    big = Replay(ratio=0.8, buffer_size=3)
    big.on_task_end(nn.Linear(1, 1), Task("old", stream(30, start=100)))
    data = big.train_data(task, nn.Linear(1, 1))
    assert len(data.examples) == 10 + round(10 * 0.8 / 0.2) == 50
    assert set(ids(list(data.examples)[10:])) == set(ids(big.buffer.examples))  # with replacement


def test_empty_buffer_or_ratio_zero_returns_the_task_itself() -> None:
    task = Task("t", stream(5))
    assert Replay(ratio=0.5).train_data(task, nn.Linear(1, 1)) is task
    off = Replay(ratio=0.0)
    off.on_task_end(nn.Linear(1, 1), Task("old", stream(5)))
    assert off.train_data(task, nn.Linear(1, 1)) is task


def test_ratio_zero_trains_exactly_like_plain_fine_tuning() -> None:
    torch.manual_seed(0)
    plain = MLP()
    replayed = copy.deepcopy(plain)
    config = TrainConfig(lr=0.05, batch_size=4, optimizer="sgd")
    strategy = Replay(ratio=0.0, buffer_size=5)
    for t in range(2):
        task = mlp_task(f"t{t}", 12, seed=t)
        train_task(plain, task, None, config)
        train_task(replayed, task, strategy, config)
    for a, b in zip(plain.parameters(), replayed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert len(strategy.buffer) == 5  # the buffer still fills; it is just never mixed in


def test_replayed_sequences_of_other_lengths_collate_with_padding() -> None:
    def lm_task(name: str, length: int) -> Task:
        seqs = torch.randint(3, 50, (6, length), generator=torch.Generator().manual_seed(length))
        examples = [{"input_ids": s, "labels": s.clone()} for s in seqs]
        return Task(name, examples, CausalLM(), pad_collate(0))

    replay = Replay(ratio=0.5, buffer_size=4)
    replay.on_task_end(nn.Linear(1, 1), lm_task("old", 9))
    data = replay.train_data(lm_task("new", 5), nn.Linear(1, 1))
    batch = data.collate(list(data.examples))
    assert batch["input_ids"].shape == (12, 9)
    assert (batch["labels"][:6, 5:] == -100).all()


def test_mismatched_keys_or_shapes_are_refused() -> None:
    replay = Replay(ratio=0.5, buffer_size=4)
    replay.on_task_end(nn.Linear(1, 1), Task("old", stream(4)))
    with pytest.raises(RetainError, match="keys"):
        replay.train_data(Task("new", [{"y": torch.tensor(1)}] * 3), nn.Linear(1, 1))
    with pytest.raises(RetainError, match="collate"):  # stack_collate cannot batch [] with [3]
        replay.train_data(Task("new", [{"x": torch.zeros(3)}] * 3), nn.Linear(1, 1))


def test_source_enters_the_buffer_once_at_the_first_task_start() -> None:
    source = Task("general", stream(6, start=500), texts=[f"text {i}" for i in range(6)])
    replay = Replay(ratio=0.5, buffer_size=10, source=source, exclude_texts=["other text"])
    task = Task("t", stream(4))
    replay.on_task_start(nn.Linear(1, 1), task)
    assert sorted(ids(replay.buffer.examples)) == list(range(500, 506))
    data = replay.train_data(task, nn.Linear(1, 1))
    assert set(ids(list(data.examples)[4:])) <= set(range(500, 506))
    replay.on_task_start(nn.Linear(1, 1), task)
    assert replay.buffer.seen == 6
    assert "source=<task 'general'>" in replay.describe()


def test_a_source_overlapping_evaluation_text_is_refused() -> None:
    texts = ["A first sentence.", "Hello   World", "another one"]
    source = Task("general", stream(3), texts=texts)
    with pytest.raises(RetainError, match=r"shares 1 text.*Hello"):
        Replay(source=source, exclude_texts=["unrelated", "  hello world "])
    Replay(source=source, exclude_texts=["hello worlds"])  # no overlap: accepted
    with pytest.raises(RetainError, match="texts"):
        Replay(source=Task("no texts", stream(3)), exclude_texts=["x"])
    with pytest.raises(RetainError, match="source"):
        Replay(exclude_texts=["x"])


@pytest.mark.parametrize("selection", ["reservoir", "class_balanced"])
def test_state_round_trip_continues_with_the_same_mix_and_selection(
    selection: str, tmp_path: Path
) -> None:
    def task(name: str, seed: int) -> Task:
        g = torch.Generator().manual_seed(seed)
        return Task(
            name,
            [{"x": torch.randn(3, generator=g), "labels": torch.tensor(i % 3)} for i in range(20)],
        )

    model = nn.Linear(1, 1)
    first = Replay(ratio=0.4, buffer_size=7, selection=selection, seed=5)  # type: ignore[arg-type]
    first.on_task_start(model, task("a", 0))
    first.on_task_end(model, task("a", 0))
    path = save_strategy_state(first, tmp_path / "replay.safetensors")
    assert "buffer.x" in read_strategy_state(path)  # same-shaped tensors are stacked
    second = Replay(ratio=0.4, buffer_size=7, selection=selection, seed=5)  # type: ignore[arg-type]
    load_strategy_state(second, path)

    for strategy in (first, second):
        strategy.on_task_start(model, task("b", 1))
    mix_a, mix_b = (s.train_data(task("b", 1), model).examples for s in (first, second))
    assert len(mix_a) == len(mix_b) == 20 + round(20 * 0.4 / 0.6)
    for ea, eb in zip(mix_a, mix_b, strict=True):
        assert torch.equal(ea["x"], eb["x"])
        assert torch.equal(ea["labels"], eb["labels"])
    for strategy in (first, second):
        strategy.on_task_end(model, task("b", 1))
    assert [ex["x"].tolist() for ex in first.buffer.examples] == [
        ex["x"].tolist() for ex in second.buffer.examples
    ]
    assert first.buffer.seen == second.buffer.seen == 40


def test_examples_of_varying_shape_are_stored_one_by_one(tmp_path: Path) -> None:
    replay = Replay(buffer_size=4)
    seqs = [torch.arange(n) for n in (3, 5, 4, 6)]
    replay.on_task_end(nn.Linear(1, 1), Task("lm", [{"input_ids": s} for s in seqs]))
    path = save_strategy_state(replay, tmp_path / "s.safetensors")
    assert "buffer.3.input_ids" in read_strategy_state(path)
    loaded = Replay(buffer_size=4)
    load_strategy_state(loaded, path)
    assert [ex["input_ids"].tolist() for ex in loaded.buffer.examples] == [s.tolist() for s in seqs]
    with pytest.raises(RetainError, match="buffer"):
        load_strategy_state(Replay(buffer_size=5), path)


def test_bad_parameters_are_refused() -> None:
    for ratio in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(RetainError, match="ratio"):
            Replay(ratio=ratio)
    with pytest.raises(RetainError, match="ratio=0"):
        Replay(buffer_size=0)
    with pytest.raises(RetainError, match="selection"):
        Replay(selection="random")  # type: ignore[arg-type]
    sequences = Task("lm", [{"input_ids": torch.arange(4), "labels": torch.arange(4)}])
    balanced = Replay(selection="class_balanced")
    with pytest.raises(RetainError, match="one integer class"):
        balanced.on_task_end(nn.Linear(1, 1), sequences)
    strategy = build_strategy("replay", ratio=0.3, buffer_size=2)
    assert isinstance(strategy, Replay)
    assert strategy.ratio == 0.3
