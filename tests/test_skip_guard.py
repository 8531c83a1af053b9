"""The CI skip guard: unlisted skips fail, listed ones pass, a pattern needs a reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from skip_guard import ALLOW_LIST, allowed_patterns, unexpected_skips


def test_patterns_need_reasons_and_match_test_ids() -> None:
    with pytest.raises(ValueError, match="needs a '# reason'"):
        allowed_patterns("tests/a.py::test_x\n")
    patterns = allowed_patterns("# c\n\ntests/a.py::*gpu*  # no GPU in CI\n")
    skips = [("tests/a.py::test_on_gpu", "no CUDA"), ("tests/b.py::test_real", "model not found")]
    assert unexpected_skips(skips, patterns) == ["tests/b.py::test_real: model not found"]


def test_the_shipped_allow_list_is_valid() -> None:
    allowed_patterns(ALLOW_LIST.read_text(encoding="utf-8"))


def test_a_session_with_an_unlisted_skip_fails_only_when_skips_are_forbidden(
    tmp_path: Path,
) -> None:
    tests = Path(__file__).parent
    (tmp_path / "conftest.py").write_text((tests / "conftest.py").read_text())
    (tmp_path / "test_x.py").write_text(
        "import pytest\n\ndef test_ok():\n    pass\n\n"
        "def test_skipped():\n    pytest.skip('the model was not found')\n"
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(tests)}
    env.pop("RETAIN_FORBID_SKIPS", None)
    relaxed = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert relaxed.returncode == 0, relaxed.stdout
    env["RETAIN_FORBID_SKIPS"] = "1"
    strict = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert strict.returncode == 1
    assert "test_x.py::test_skipped: the model was not found" in strict.stdout
