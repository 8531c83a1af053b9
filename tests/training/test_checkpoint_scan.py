"""Which checkpoint folders are complete, and why the others are not."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from retain.training.checkpoint import save_checkpoint
from retain.training.checkpoint_scan import (
    checkpoint_problem,
    latest_checkpoint,
    older_checkpoint,
    scan_checkpoints,
)


def test_every_incomplete_folder_is_reported_with_its_reason(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    for step in (1, 2, 3, 4, 5):
        save_checkpoint(tmp_path, model=model, position={"global_step": step})
    (tmp_path / "step-2" / "model.safetensors").unlink()
    position = tmp_path / "step-3" / "position.json"
    size = position.stat().st_size
    position.write_text(position.read_text() + " ")
    (tmp_path / "step-4" / "checkpoint.json").unlink()  # a folder killed before its manifest
    (tmp_path / "step-5" / "checkpoint.json").write_text("{not json")
    (tmp_path / ".staging-step-6").mkdir()  # left by a kill mid-save: not a checkpoint folder
    (tmp_path / "notes").mkdir()
    scan = scan_checkpoints(tmp_path)
    assert scan.complete == [tmp_path / "step-1"]
    reasons = dict(scan.skipped)
    assert list(reasons) == [tmp_path / f"step-{n}" for n in (2, 3, 4, 5)]
    assert reasons[tmp_path / "step-2"] == "model.safetensors is missing"
    assert reasons[tmp_path / "step-3"] == (
        f"position.json is {size + 1:,} bytes, the manifest says {size:,}"
    )
    assert reasons[tmp_path / "step-4"] == "incomplete: no checkpoint.json"
    assert reasons[tmp_path / "step-5"].startswith("checkpoint.json is unreadable (")
    assert latest_checkpoint(tmp_path) == tmp_path / "step-1"
    assert checkpoint_problem(tmp_path / "step-2") == "model.safetensors is missing"
    assert checkpoint_problem(tmp_path / "step-1") == ""
    assert checkpoint_problem(tmp_path / "absent") == "no such folder"
    assert scan_checkpoints(tmp_path / "absent").complete == []


def test_older_checkpoint_is_the_previous_complete_save(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, model=model, position={"global_step": step})
    assert older_checkpoint(tmp_path / "step-3") == tmp_path / "step-2"
    assert older_checkpoint(tmp_path / "step-1") is None
    (tmp_path / "step-2" / "model.safetensors").unlink()
    assert older_checkpoint(tmp_path / "step-3") == tmp_path / "step-1"  # skips incomplete ones
    assert older_checkpoint(tmp_path / "step-2") == tmp_path / "step-1"  # by step number
    assert older_checkpoint(tmp_path / "elsewhere") is None
