"""Output folders appear whole or not at all, are replaced only when retain owns every file in
them, and are locked; JSON is strict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from retain.errors import RetainError
from retain.experiment.run_dir import check_output_dir, output_directory, to_jsonable, write_json
from retain.output_dirs import MARKER, foreign_entries, output_kind, output_lock


def test_directory_appears_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "run"

    def crash_halfway() -> None:
        with output_directory(out, kind="audit") as tmp:
            (tmp / "results.json").write_text("{}")
            raise RuntimeError("crash halfway")

    with pytest.raises(RuntimeError):
        crash_halfway()
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder and the lock are gone too
    with output_directory(out, kind="audit") as tmp:
        (tmp / "results.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "results.json"]
    assert output_kind(out) == "audit"
    assert list(tmp_path.iterdir()) == [out]


def test_existing_directory_needs_overwrite_and_a_marker(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(RetainError, match="--overwrite"):
        check_output_dir(out, overwrite=False, kind="audit")
    with pytest.raises(RetainError, match="never deleted, even with --overwrite"):
        check_output_dir(out, overwrite=True, kind="audit")
    assert (out / "old.txt").read_text() == "keep me"


def test_output_path_that_is_a_file_a_link_or_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(RetainError, match="is a file"):
        check_output_dir(tmp_path / "f", overwrite=True, kind="audit")
    with pytest.raises(RetainError, match="which is a file, not a folder"):
        check_output_dir(tmp_path / "f" / "x" / "y", overwrite=False, kind="audit")
    check_output_dir(tmp_path / "a" / "b", overwrite=False, kind="audit")  # parents: made later
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(RetainError, match="symbolic link"):
        check_output_dir(tmp_path / "link", overwrite=True, kind="audit")


def test_missing_parents_are_made_and_removed_again_when_nothing_was_written(
    tmp_path: Path,
) -> None:
    out = tmp_path / "runs" / "deep" / "audit"
    made = []

    def interrupted() -> None:
        with output_directory(out, kind="audit"):
            made.append((tmp_path / "runs" / "deep").is_dir())
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert made == [True]
    assert list(tmp_path.iterdir()) == []
    with output_directory(out, kind="audit") as tmp:
        (tmp / "results.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "results.json"]
    assert sorted(p.name for p in (tmp_path / "runs" / "deep").iterdir()) == ["audit"]


def test_json_is_strict_and_plain(tmp_path: Path) -> None:
    data = {"nan": math.nan, "inf": -math.inf, "np": np.float32(0.5), "i": np.int64(3), "t": (1,)}
    assert to_jsonable(data) == {"nan": None, "inf": None, "np": 0.5, "i": 3, "t": [1]}
    write_json(tmp_path / "r.json", data)
    assert json.loads((tmp_path / "r.json").read_text())["np"] == 0.5


def test_overwrite_replaces_only_an_earlier_output_of_the_same_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    with output_directory(out, kind="audit") as tmp:
        (tmp / "results.json").write_text("{}")
    with pytest.raises(RetainError, match="holds a retain audit output, not a diagnose"):
        check_output_dir(out, overwrite=True, kind="diagnose")
    # A results.json of the user's own does not make a folder retain's: only the marker does.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text('{"kind": "diagnose"}')
    with pytest.raises(RetainError, match=r"no \.retain-output\.json"):
        check_output_dir(mine, overwrite=True, kind="diagnose")
    # A file retain did not write inside its own output blocks the overwrite.
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(RetainError, match=r"files retain did not write \(notes\.txt\)"):
        check_output_dir(out, overwrite=True, kind="audit")
    (out / "notes.txt").unlink()
    with output_directory(out, overwrite=True, kind="audit") as tmp:
        (tmp / "results.json").write_text('{"new": true}')
    assert json.loads((out / "results.json").read_text()) == {"new": True}
    monkeypatch.chdir(out)
    with pytest.raises(RetainError, match="working directory or a folder above it"):
        check_output_dir(Path("."), overwrite=True, kind="diagnose")
    with pytest.raises(RetainError, match="working directory or a folder above it"):
        check_output_dir(tmp_path, overwrite=True, kind="diagnose")


def test_foreign_entries_of_each_layout(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / "tasks" / "step-3").mkdir(parents=True)
    (run / "checkpoints" / "tasks" / "step-3" / "model.safetensors").write_bytes(b"x")
    (run / "plots").mkdir()
    (run / "plots" / "matrix.png").write_bytes(b"x")
    (run / "plots" / "mine.pdf").write_bytes(b"x")
    (run / "results.json").write_text("{}")
    (run / ".results.json.ab12cd").write_text("{")  # an atomic write that was killed
    (run / "extra").mkdir()
    assert foreign_entries(run, "run") == ["extra", "plots/mine.pdf"]
    (run / "checkpoints" / "link").symlink_to(tmp_path)
    assert "checkpoints/link" in foreign_entries(run, "run")
    assert foreign_entries(run, "audit")[:2] == ["checkpoints", "extra"]


def test_lock_is_exclusive_reentrant_and_names_the_holder(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    code = (
        "import sys, time; from pathlib import Path; from retain.output_dirs import output_lock\n"
        "with output_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(
                RetainError, match=rf"in use by another retain process \(pid {holder.pid}\)"
            ),
            output_lock(out),
        ):
            pass
    finally:
        holder.kill()  # like kill -9: no cleanup runs
        holder.wait()
    # The kernel dropped the dead holder's lock: a stale lock file never blocks.
    with output_lock(out), output_lock(out):  # re-entrant in one process
        assert f"{os.getpid()}" in (tmp_path / ".out.lock").read_text()
    assert not (tmp_path / ".out.lock").exists()
