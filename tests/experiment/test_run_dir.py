"""Run directories appear whole or not at all; JSON is strict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from retain.errors import RetainError
from retain.experiment.run_dir import check_output_dir, output_directory, to_jsonable, write_json


def test_directory_appears_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "run"

    def crash_halfway() -> None:
        with output_directory(out) as tmp:
            (tmp / "results.json").write_text("{}")
            raise RuntimeError("crash halfway")

    with pytest.raises(RuntimeError):
        crash_halfway()
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too
    with output_directory(out) as tmp:
        (tmp / "results.json").write_text("{}")
    assert [p.name for p in out.iterdir()] == ["results.json"]


def test_existing_directory_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    with pytest.raises(RetainError, match="--overwrite"):
        check_output_dir(out, overwrite=False)
    with output_directory(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("x")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_output_path_that_is_a_file_or_has_no_parent(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(RetainError, match="is a file"):
        check_output_dir(tmp_path / "f", overwrite=True)
    with pytest.raises(RetainError, match="does not exist"):
        check_output_dir(tmp_path / "a" / "b", overwrite=False)


def test_json_is_strict_and_plain(tmp_path: Path) -> None:
    data = {"nan": math.nan, "inf": -math.inf, "np": np.float32(0.5), "i": np.int64(3), "t": (1,)}
    assert to_jsonable(data) == {"nan": None, "inf": None, "np": 0.5, "i": 3, "t": [1]}
    write_json(tmp_path / "r.json", data)
    assert json.loads((tmp_path / "r.json").read_text())["np"] == 0.5


def test_overwrite_replaces_only_an_earlier_output_of_the_same_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(RetainError, match="never deleted, even with --overwrite"):
        check_output_dir(out, overwrite=True, kind="diagnose")
    (out / "results.json").write_text('{"kind": "audit"}')
    with pytest.raises(RetainError, match="not the output of an earlier retain diagnose"):
        check_output_dir(out, overwrite=True, kind="diagnose")
    assert (out / "notes.txt").read_text() == "keep me"
    (out / "results.json").write_text('{"kind": "diagnose"}')
    with output_directory(out, overwrite=True, kind="diagnose") as tmp:
        (tmp / "results.json").write_text('{"kind": "diagnose", "new": true}')
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    monkeypatch.chdir(out)
    with pytest.raises(RetainError, match="working directory or a folder above it"):
        check_output_dir(Path("."), overwrite=True, kind="diagnose")
    with pytest.raises(RetainError, match="working directory or a folder above it"):
        check_output_dir(tmp_path, overwrite=True)
