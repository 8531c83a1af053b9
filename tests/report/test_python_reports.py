"""Reports from Python, as a notebook makes them: ``fit_sequence`` -> ``retain.write_report`` ->
a run directory that ``retain report`` reads again and a page that opens in headless Chromium;
and ``RunResult.save`` -> ``retain report FILE --out DIR``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_browser import _check_in_browser, chromium  # noqa: F401  (the fixture)

import retain
from retain.assets.mlp import MLP
from retain.cli import main
from retain.data.permuted import permuted_image_tasks
from retain.errors import RetainError
from retain.output_dirs import output_kind
from retain.records.run import RunRecord, RunResult
from retain.report.plots import run_figures
from retain.training.loop import TrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result() -> RunResult:
    splits = permuted_image_tasks("digits", 2, seed=0)
    torch.manual_seed(0)
    _, run = retain.fit_sequence(
        MLP(64, [32], 10),
        splits,
        retain.chain("ewc"),
        TrainConfig(lr=2e-2, batch_size=32, max_steps=6),
        progress=False,
    )
    return run


def test_a_notebook_result_becomes_a_run_directory(
    result: RunResult,
    tmp_path: Path,
    chromium: str,  # noqa: F811  (the fixture imported from test_browser)
) -> None:
    out = tmp_path / "reports" / "ewc"
    report = retain.write_report(result, out, name="digits", model="mlp-64-32-10")
    assert report == out / "report.html"
    assert output_kind(out) == "run"
    record = RunRecord.load(out / "results.json")
    assert record.run == result  # the same record `retain run` writes, under `run`
    assert (record.name, record.model, record.seed) == ("digits", "mlp-64-32-10", 0)
    assert record.variant == result.strategies != "naive"
    assert (record.score.name, record.score.higher_is_better) == ("accuracy", True)
    pngs = [out / "plots" / f"{name}.png" for name in run_figures(record)]
    assert all(p.is_file() for p in pngs)
    _check_in_browser(chromium, report, tmp_path, pngs, tables=3)  # header, summary, matrix
    # Re-running the notebook cell replaces its own run directory; `retain report` reads it.
    retain.write_report(result, out, name="digits")
    assert main(["report", str(out)]) == 0
    assert main(["report", str(out), str(out), "--out", str(tmp_path / "cmp")]) == 0


def test_a_saved_result_file_gets_a_report_from_the_cli(result: RunResult, tmp_path: Path) -> None:
    saved = tmp_path / "ewc-seed0.json"
    result.save(saved)
    assert main(["report", str(saved), "--out", str(tmp_path / "run")]) == 0
    record = RunRecord.load(tmp_path / "run" / "results.json")
    assert record.run == result
    assert record.name == "ewc-seed0"
    assert (tmp_path / "run" / "report.html").is_file()


def test_write_report_never_writes_into_a_foreign_folder(result: RunResult, tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious\n")
    with pytest.raises(RetainError, match="not a retain output folder"):
        retain.write_report(result, tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_result_file_needs_out_and_must_be_a_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"tasks": ["a"], "matrix": [[0.5]]}))
    assert main(["report", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "is not a valid run result (baseline: Field required)" in capsys.readouterr().err
    assert main(["report", str(bad)]) == 2
    assert "is a file: name the run directory to make for it with --out" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
