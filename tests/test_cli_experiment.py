"""The experiment commands: validate, run, report, sweep; user mistakes exit 2 with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from retain.cli import main

CONFIG = {
    "name": "cli-mlp",
    "model": {"name": "mlp", "kind": "mlp", "hidden": [16]},
    "tasks": [
        {"dataset": "digits", "train": 120, "test": 60},
        {"dataset": "digits", "permutation": 1, "train": 120, "test": 60},
    ],
    "strategies": [{"name": "l2sp", "alpha": 0.1}],
    "training": {"lr": 1e-2, "batch_size": 20, "max_steps": 5},
    "monitor": {"max_degradation": 0.5, "eval_every": 2},
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_validate_checks_without_training(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    code, out, _ = run(capsys, "validate", str(config_file), "training.lr=3e-3")
    assert code == 0
    assert "ok: task digits-perm1: 120 train, 60 test examples" in out
    assert out.rstrip().endswith("valid")
    assert not (config_file.parent / "runs").exists()


def test_validate_of_a_causal_lm_prints_no_library_progress_bars(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_lm_dirs: tuple[Path, Path]
) -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()  # as a notebook or another library may leave it
    lm = {
        **CONFIG,
        "model": {"name": str(tiny_lm_dirs[0]), "kind": "causal-lm"},
        "tasks": [{"dataset": "sms_spam", "train": 8, "test": 4}],
        "strategies": [],
        "monitor": None,
    }
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(lm))
    code, out, err = run(capsys, "validate", str(tmp_path / "lm.yaml"))
    assert code == 0, err
    assert "%|" not in out + err  # tqdm's bar ("Loading weights: 100%|...")
    assert not transformers_logging.is_progress_bar_enabled()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["training.lrr=1"], "training.lrr: unknown setting"),
        (["tasks.0.dataset=no_such_data"], "no_such_data"),
        (["strategies.0.name=l2spp"], "did you mean 'l2sp'"),
        (["strategies.0.params=^nothing"], "matches no parameter"),
        (["tasks.0.label_column=missing"], "has no column 'missing'"),
    ],
)
def test_validate_names_the_bad_setting(
    capsys: pytest.CaptureFixture[str], config_file: Path, extra: list[str], expected: str
) -> None:
    code, _, err = run(capsys, "validate", str(config_file), *extra)
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith("retain: error: ")
    assert expected in err


def test_run_report_and_refusal(capsys: pytest.CaptureFixture[str], config_file: Path) -> None:
    out_dir = config_file.parent / "run"
    code, out, err = run(capsys, "run", str(config_file), "--out", str(out_dir), "--seed", "2")
    assert code == 0
    assert "digits-perm1" in out
    assert f"report: {out_dir / 'report.html'}" in out
    assert (out_dir / "report.html").is_file()
    assert yaml.safe_load((out_dir / "config.yaml").read_text())["seeds"] == [2]

    code, _, err = run(capsys, "run", str(config_file), "--out", str(out_dir), "--seed", "2")
    assert code == 2
    assert "holds a finished run" in err

    (out_dir / "report.html").unlink()
    code, out, _ = run(capsys, "report", str(out_dir))
    assert code == 0
    assert (out_dir / "report.html").is_file()
    code, _, err = run(capsys, "report", str(config_file.parent / "nothing-here"))
    assert code == 2


def test_sweep_prints_the_comparison(capsys: pytest.CaptureFixture[str], config_file: Path) -> None:
    out_dir = config_file.parent / "sweep"
    code, out, _ = run(
        capsys,
        "sweep",
        str(config_file),
        "--strategies",
        "naive,l2sp",
        "--grid",
        "l2sp.alpha=0.01,1",
        "--seeds",
        "1",
        "--out",
        str(out_dir),
        "checkpoints.enabled=false",
    )
    assert code == 0
    for variant in ("naive", "l2sp alpha=0.01", "l2sp alpha=1"):
        assert variant in out
    assert f"report: {out_dir / 'report.html'}" in out
    code, _, err = run(capsys, "sweep", str(config_file), "--strategies", "naive,ewcc")
    assert code == 2
    assert "did you mean 'ewc'" in err


def test_report_never_averages_different_runs_as_seeds(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    import json

    root = config_file.parent
    assert run(capsys, "run", str(config_file), "--out", str(root / "a"))[0] == 0
    other = ["--out", str(root / "b"), "training.max_steps=3"]
    assert run(capsys, "run", str(config_file), *other)[0] == 0
    code, _, _ = run(capsys, "report", str(root / "a"), str(root / "b"), "--out", str(root / "ab"))
    assert code == 0
    rows = json.loads((root / "ab" / "comparison.json").read_text())["rows"]
    assert len(rows) == 2
    assert rows[0]["variant"].endswith("/a]")
    assert rows[1]["variant"].endswith("/b]")
    assert all(r["n"] == 1 for r in rows)
    code, _, _ = run(capsys, "report", str(root / "a"), str(root / "a"), "--out", str(root / "aa"))
    assert code == 0
    rows = json.loads((root / "aa" / "comparison.json").read_text())["rows"]
    assert [(r["variant"], r["n"]) for r in rows] == [("l2sp", 1)]


def test_validate_warns_when_l2sp_anchors_at_the_random_start_of_a_model_built_from_scratch(
    capsys: pytest.CaptureFixture[str], config_file: Path
) -> None:
    code, out, err = run(capsys, "validate", str(config_file))
    assert code == 0
    assert out.rstrip().endswith("valid")
    warning = "warning: strategies.0: l2sp anchors at the pretrained weights, but model 'mlp'"
    assert warning in err
    assert "use anchor: task_start" in err
    code, _, err = run(capsys, "validate", str(config_file), "strategies.0.anchor=task_start")
    assert code == 0
    assert "warning" not in err
    code, _, err = run(capsys, "validate", "permuted_mnist")  # the shipped config: no mistake
    assert code == 0
    assert "warning" not in err
