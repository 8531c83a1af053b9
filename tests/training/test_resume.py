"""Kill a checkpointing run mid-task and resume it: the results equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from retain.errors import RetainError
from retain.training.checkpoint import latest_checkpoint, load_checkpoint

CHILD = Path(__file__).with_name("resume_child.py")


def child(out: Path, *extra: str, sleep: float = 0.0) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RETAIN_TEST_SLEEP": str(sleep), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, str(CHILD), str(out), *extra], env=env)


def finished(out: Path, *extra: str) -> None:
    assert child(out, *extra).wait(timeout=300) == 0


def comparable(out: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    for key in ("seconds", "resumed", "resume_notes"):
        result.pop(key)
    return result


def test_killed_run_resumes_to_identical_results(tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    finished(reference)
    process = child(killed, sleep=0.15)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # wait for a checkpoint in the middle of task 1
        found = latest_checkpoint(killed / "checkpoints" / "steps")
        if found is not None:
            position, _ = load_checkpoint(found, model=None, rng=False)
            if position["task"] == 1 and position["step"] >= 4:
                break
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "result.json").exists()
    finished(killed, "--resume")
    resumed = json.loads((killed / "result.json").read_text())["resumed"]
    assert any("/steps/" in path for path in resumed)  # resumed mid-task, not from a boundary
    notes = json.loads((killed / "result.json").read_text())["resume_notes"]
    assert notes == [
        f"resuming from {resumed[-1]!r} (the newest complete checkpoint, in the task "
        f"begun at {resumed[0]!r})"
    ]
    assert comparable(killed) == comparable(reference)
    a = load_file(str(reference / "weights.safetensors"))
    b = load_file(str(killed / "weights.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_checkpoints_are_not_overwritten(tmp_path: Path) -> None:
    from retain.assets.mlp import MLP
    from retain.data.permuted import TaskSplit, permuted_image_tasks
    from retain.training.loop import TrainConfig
    from retain.training.sequence import fit_sequence

    split = permuted_image_tasks("digits", 1, seed=0)[0]
    split = TaskSplit(split.train.with_examples(split.train.examples[:64]), split.test)
    config = TrainConfig(batch_size=32)
    fit_sequence(MLP(64, [8], 10), [split], None, config, checkpoint_dir=tmp_path)
    with pytest.raises(RetainError, match=r"already holds checkpoints.*resume=True"):
        fit_sequence(MLP(64, [8], 10), [split], None, config, checkpoint_dir=tmp_path)
    # Resuming a finished run trains nothing more and returns the same matrix.
    model = MLP(64, [8], 10)
    _, again = fit_sequence(model, [split], None, config, checkpoint_dir=tmp_path, resume=True)
    assert again.logs[0].steps == 2
    with pytest.raises(RetainError, match="checkpoint_dir"):
        fit_sequence(MLP(64, [8], 10), [split], None, config, resume=True)
