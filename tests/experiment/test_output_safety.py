"""What retain promises about a user's files and runs: ``--overwrite`` never removes a file that
retain did not write; a live run's folder is locked against a second process; a lock left by a
killed process never blocks its resume; a fresh run that fails with nothing to resume from
leaves nothing behind."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from retain.cli import main
from retain.errors import RetainError
from retain.experiment.config import config_from_dict
from retain.experiment.run_dir import output_directory
from retain.experiment.runner import RunSpec, run_experiment

CONFIG: dict[str, Any] = {
    "name": "safety",
    "model": {"name": "mlp", "kind": "mlp", "hidden": [8]},
    "tasks": [
        {"dataset": "digits", "train": 60, "test": 20},
        {"dataset": "digits", "permutation": 1, "train": 60, "test": 20},
    ],
    "training": {"lr": 1e-2, "batch_size": 20, "max_steps": 3},
}
_NAMES = ["notes.txt", "config.yaml", "results.json", "report.html.bak", "data.csv", ".env", "x"]
_FOLDERS = ["mine", "plots", "checkpoints_old", "sub", ".hidden"]


def _user_tree(rng: random.Random, root: Path, count: int) -> dict[Path, str]:
    """``count`` user files at random places below ``root`` (names retain also uses, on
    purpose); returns each path with its content."""
    files = {}
    for k in range(count):
        folder = root.joinpath(*rng.sample(_FOLDERS, rng.randint(0, 2)))
        name = rng.choice(_NAMES)
        if folder.name == "plots" and folder.parent == root:
            name += ".user"  # plots/*.png in retain's own output folder is retain's namespace
        path = folder / name
        if path.exists() or any(p.is_file() for p in path.parents):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        files[path] = f"user file {k} {rng.random()}"
        path.write_text(files[path])
    return files


def _refusal(action: Any) -> str | None:
    """``action()``'s RetainError message, or None when it ran."""
    try:
        action()
    except RetainError as error:
        return str(error)
    return None


def _intact(files: dict[Path, str]) -> bool:
    return all(path.is_file() and path.read_text() == text for path, text in files.items())


@pytest.mark.parametrize("trial", range(24))
def test_overwrite_never_removes_a_file_retain_did_not_write(trial: int, tmp_path: Path) -> None:
    rng = random.Random(trial)
    kind = rng.choice(["audit", "diagnose"])
    out = tmp_path / "out"
    with output_directory(out, kind=kind) as tmp:
        (tmp / "results.json").write_text("{}")
    around = _user_tree(rng, tmp_path, rng.randint(0, 6))
    inside = _user_tree(rng, out, rng.randint(0, 3))

    def again() -> None:
        with output_directory(out, overwrite=True, kind=kind) as tmp:
            (tmp / "results.json").write_text('{"again": true}')

    refusal = _refusal(again)
    assert (refusal is None) == (not inside)  # refused exactly when a user file was inside
    assert refusal is None or "did not write" in refusal
    assert _intact(around)
    assert _intact(inside)


@pytest.mark.parametrize("trial", range(4))
def test_run_overwrite_never_removes_a_file_retain_did_not_write(
    trial: int, tmp_path: Path
) -> None:
    rng = random.Random(100 + trial)
    config = config_from_dict(CONFIG)
    out = tmp_path / "run"
    run_experiment(RunSpec(config, out=out, report=trial % 2 == 0))
    around = _user_tree(rng, tmp_path, 4)
    inside = _user_tree(rng, out, trial % 2 + (1 if trial > 1 else 0))
    refusal = _refusal(
        lambda: run_experiment(RunSpec(config, out=out, overwrite=True, report=False))
    )
    assert (refusal is None) == (not inside)
    assert refusal is None or "did not write" in refusal
    assert _intact(around)
    assert _intact(inside)


def _start(config_file: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "retain", "run", str(config_file), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition: Any, process: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert process.poll() is None, f"the first run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _slow_config(tmp_path: Path, every: int = 0) -> Path:
    path = tmp_path / "slow.yaml"
    slow = {**CONFIG, "training": {**CONFIG["training"], "max_steps": 4000}}
    path.write_text(yaml.safe_dump({**slow, "checkpoints": {"every": every}}))
    return path


def test_a_second_run_into_a_live_folder_is_refused_and_the_first_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file, out = _slow_config(tmp_path), tmp_path / "run"
    first = _start(config_file, out)
    try:
        _wait_for((out / "config.yaml").exists, first, "it started")
        for extra in ([], ["--overwrite"]):
            code = main(["run", str(config_file), "--out", str(out), *extra])
            err = capsys.readouterr().err
            assert code == 2
            assert f"in use by another retain process (pid {first.pid})" in err
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
    results = json.loads((out / "results.json").read_text())
    assert results["format"] == "retain.run/1"
    assert len(results["run"]["matrix"]) == 2
    assert (out / "report.html").is_file()
    assert not (tmp_path / ".run.lock").exists()


def test_a_killed_run_leaves_a_lock_file_that_does_not_block_its_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file, out = _slow_config(tmp_path, every=500), tmp_path / "run"
    first = _start(config_file, out)
    try:
        steps = out / "checkpoints" / "steps"
        _wait_for(lambda: steps.is_dir() and any(steps.glob("step-*")), first, "a checkpoint")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (tmp_path / ".run.lock").exists()  # the killed process could not remove it
    assert main(["run", str(config_file), "--out", str(out)]) == 0
    assert "resuming safety" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["run"]["resumed"]


def test_a_fresh_run_that_fails_before_any_checkpoint_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import retain.training.sequence as sequence

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(sequence, "train_task", interrupted)
    config = config_from_dict(CONFIG)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(RunSpec(config, out=tmp_path / "new", report=False))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty").mkdir()  # a folder the user made stays, empty as it was
    with pytest.raises(KeyboardInterrupt):
        run_experiment(RunSpec(config, out=tmp_path / "empty", report=False))
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]
    assert list((tmp_path / "empty").iterdir()) == []


def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "retain", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )


def test_a_stray_rank_in_the_shell_still_writes_the_run(tmp_path: Path) -> None:
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(CONFIG))
    env = {"RANK": "1", "WORLD_SIZE": "1"}
    done = _cli(["run", "c.yaml", "--out", "r"], tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r" / "results.json").is_file()
    assert (tmp_path / "r" / "report.html").is_file()


def test_missing_parents_of_out_are_made(tmp_path: Path) -> None:
    config = config_from_dict(CONFIG)
    run_experiment(RunSpec(config, out=tmp_path / "runs" / "deep" / "r", report=False))
    assert (tmp_path / "runs" / "deep" / "r" / "results.json").is_file()


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    import resource

    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(CONFIG))
    limit = 4096  # bytes a process may write to one file: the first checkpoint is larger

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "retain", "run", "c.yaml", "--out", "r"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=small_files,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("retain: error: cannot write '")
    assert "larger than this file system or the file-size limit allows" in lines[-1]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_a_rerun_writes_the_report_an_interruption_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import retain.report.write as write

    config = config_from_dict(CONFIG)
    out = tmp_path / "r"
    real = write.write_run_report

    def interrupted(run_dir: Path) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(write, "write_run_report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(RunSpec(config, out=out))
    assert (out / "results.json").is_file()  # finished: kept
    assert not (out / "report.html").exists()
    monkeypatch.setattr(write, "write_run_report", real)
    before = (out / "results.json").read_bytes()
    said: list[str] = []
    again = run_experiment(RunSpec(config, out=out, say=said.append))
    assert (out / "report.html").is_file()
    assert (out / "results.json").read_bytes() == before  # not trained again
    assert again.run.matrix == json.loads(before)["run"]["matrix"]
    assert any("wrote its missing" in line for line in said)


def test_report_from_inside_a_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    run_experiment(RunSpec(config_from_dict(CONFIG), out=out, report=False))
    monkeypatch.chdir(out)
    assert main(["report", "."]) == 0, capsys.readouterr().err
    assert (out / "report.html").is_file()


def test_an_output_under_a_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    assert main(["run", "c.yaml", "--out", "afile/x/y"]) == 2
    assert "which is a file, not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "c.yaml"]
