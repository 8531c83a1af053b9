"""Choosing where a run resumes: the decision is recorded, ``from_checkpoint`` picks exactly,
nothing to resume is an error, and a corrupt checkpoint names the next older one."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from retain.assets.mlp import MLP
from retain.data.permuted import TaskSplit, permuted_image_tasks
from retain.data.task import Task
from retain.errors import RetainError
from retain.strategies.base import Strategy
from retain.training.loop import TrainConfig
from retain.training.sequence import RunResult, fit_sequence

CONFIG = TrainConfig(lr=3e-3, batch_size=32, seed=5)


class CrashedError(Exception):
    """Stands in for a killed process."""


class Crash(Strategy):
    """Raises :class:`CrashedError` after optimizer step ``step`` of task ``task`` (None: never)."""

    name = "crash"

    def __init__(self, task: str | None = None, step: int = 0) -> None:
        self.task, self.step, self.current = task, step, ""

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        self.current = task.name

    def on_step(self, step: int, model: nn.Module) -> None:
        if self.current == self.task and step == self.step:
            raise CrashedError


@pytest.fixture(scope="module")
def splits() -> list[TaskSplit]:
    found = permuted_image_tasks("digits", 2, seed=0)  # 4 steps of 32 examples per task
    return [TaskSplit(s.train.with_examples(s.train.examples[:128]), s.test) for s in found]


def run(splits: list[TaskSplit], folder: Path | None, **kw: Any) -> RunResult:
    torch.manual_seed(0)
    strategy = kw.pop("strategy", Crash())
    return fit_sequence(
        MLP(64, [32], 10), splits, strategy, CONFIG, checkpoint_dir=folder, checkpoint_every=2, **kw
    )[1]


@pytest.fixture(scope="module")
def reference(splits: list[TaskSplit]) -> RunResult:
    return run(splits, None)


@pytest.fixture(scope="module")
def crashed(splits: list[TaskSplit], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run killed after step 3 of task 2: ``tasks/step-4`` (task 2's start) and
    ``steps/step-6`` (task 2, step 2)."""
    folder = tmp_path_factory.mktemp("crashed") / "checkpoints"
    with pytest.raises(CrashedError):
        run(splits, folder, strategy=Crash(splits[1].train.name, 3))
    assert sorted(p.name for p in (folder / "tasks").iterdir()) == ["step-4"]
    assert sorted(p.name for p in (folder / "steps").iterdir()) == ["step-6"]
    return folder


@pytest.fixture
def folder(crashed: Path, tmp_path: Path) -> Path:
    """A fresh copy of the crashed run's checkpoints."""
    return Path(shutil.copytree(crashed, tmp_path / "checkpoints"))


def same_run(result: RunResult, reference: RunResult) -> None:
    assert result.matrix == reference.matrix
    assert result.baseline == reference.baseline
    assert result.logs == reference.logs


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1  # same size: only SHA-256 notices
    path.write_bytes(bytes(data))


def test_the_resume_decision_is_said_and_recorded(
    splits: list[TaskSplit], reference: RunResult, folder: Path
) -> None:
    newer = folder / "steps" / "step-8"  # a newer mid-task checkpoint whose weights were cut short
    shutil.copytree(folder / "steps" / "step-6", newer)
    weights = newer / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    (folder / "steps" / ".staging-step-9").mkdir()  # a kill mid-save: expected, not reported
    lines: list[str] = []
    result = run(splits, folder, resume=True, say=lines.append)
    start, mid = folder / "tasks" / "step-4", folder / "steps" / "step-6"
    note = (
        f"resuming from {str(mid)!r} (the newest complete checkpoint, in the task begun at "
        f"{str(start)!r}); skipped {str(newer)!r}: model.safetensors is {size // 2:,} bytes, "
        f"the manifest says {size:,}"
    )
    assert lines == [note]
    assert result.resume_notes == [note]
    assert result.to_dict()["resume_notes"] == [note]
    assert result.resumed == [str(start), str(mid)]
    same_run(result, reference)  # the skipped folder changed nothing
    assert reference.resume_notes == []


def test_from_checkpoint_resumes_from_exactly_that_folder(
    splits: list[TaskSplit], reference: RunResult, folder: Path
) -> None:
    start, mid = folder / "tasks" / "step-4", folder / "steps" / "step-6"
    second = Path(shutil.copytree(folder, folder.parent / "second"))
    lines: list[str] = []
    result = run(splits, folder, from_checkpoint=start, say=lines.append)  # not the newest (mid)
    assert result.resumed == [str(start)]
    assert lines == [f"resuming from {str(start)!r} (as requested)"]
    same_run(result, reference)  # task 2 trained again from its start, with the same RNG
    # A step checkpoint is resumed with its task's start from the sibling tasks/ folder.
    start, mid = second / "tasks" / "step-4", second / "steps" / "step-6"
    result = run(splits, second, from_checkpoint=mid)
    assert result.resumed == [str(start), str(mid)]
    assert result.resume_notes == [
        f"resuming from {str(mid)!r} (as requested, in the task begun at {str(start)!r})"
    ]
    same_run(result, reference)


def test_from_checkpoint_refuses_what_it_cannot_resume(
    splits: list[TaskSplit], folder: Path
) -> None:
    fix = "pass a checkpoints/tasks/step-<n> or checkpoints/steps/step-<n> folder"
    absent = folder / "steps" / "step-99"
    with pytest.raises(RetainError) as caught:
        run(splits, folder, from_checkpoint=absent)
    assert str(caught.value) == (
        f"--from-checkpoint {str(absent)!r} is not a complete checkpoint (no such folder); {fix}"
    )
    mid = folder / "steps" / "step-6"
    shutil.rmtree(folder / "tasks")  # the start of the task it is in the middle of is gone
    with pytest.raises(RetainError) as caught:
        run(splits, folder, from_checkpoint=mid)
    assert str(caught.value) == (
        f"--from-checkpoint {str(mid)!r} is in the middle of task 2, but "
        f"{str(folder / 'tasks')!r} holds no complete checkpoint of that task's start; pass a "
        "checkpoints/tasks/step-<n> folder instead"
    )
    (mid / "optimizer.safetensors").unlink()
    with pytest.raises(RetainError) as caught:
        run(splits, folder, from_checkpoint=mid)
    assert str(caught.value) == (
        f"--from-checkpoint {str(mid)!r} is not a complete checkpoint "
        f"(optimizer.safetensors is missing); {fix}"
    )


def test_resume_with_nothing_to_resume_is_an_error(splits: list[TaskSplit], folder: Path) -> None:
    fix = "start afresh with --overwrite (resume=False)"
    empty = folder.parent / "deleted"
    with pytest.raises(RetainError) as caught:
        run(splits, empty, resume=True)
    assert str(caught.value) == f"no complete checkpoint to resume from in {str(empty)!r}; {fix}"
    start = folder / "tasks" / "step-4"
    (start / "model.safetensors").unlink()
    with pytest.raises(RetainError) as caught:
        run(splits, folder, resume=True)
    assert str(caught.value) == (
        f"no complete checkpoint to resume from in {str(folder)!r}; {str(start)!r} is not "
        f"complete: model.safetensors is missing; {fix}"
    )


def test_same_size_corruption_names_the_next_older_checkpoint(
    splits: list[TaskSplit], reference: RunResult, folder: Path
) -> None:
    start, mid = folder / "tasks" / "step-4", folder / "steps" / "step-6"
    second = Path(shutil.copytree(folder, folder.parent / "second"))
    flip_a_byte(mid / "model.safetensors")
    with pytest.raises(RetainError) as caught:
        run(splits, folder, resume=True)
    assert str(caught.value) == (
        f"checkpoint file {str(mid / 'model.safetensors')!r} is missing, truncated or corrupt "
        "(size or SHA-256 differs from the manifest); resume from the next older complete "
        f"checkpoint with --from-checkpoint {start}"
    )
    same_run(run(splits, folder, from_checkpoint=start), reference)  # the advice works
    weights = second / "tasks" / "step-4" / "model.safetensors"
    flip_a_byte(weights)
    with pytest.raises(RetainError) as caught:
        run(splits, second, resume=True)
    assert str(caught.value) == (
        f"checkpoint file {str(weights)!r} is missing, truncated or corrupt (size or SHA-256 "
        "differs from the manifest); no older complete checkpoint is left; start afresh with "
        "--overwrite (resume=False)"
    )
