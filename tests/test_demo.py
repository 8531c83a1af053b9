"""``retain demo`` end to end: the shipped demo sweep shows forgetting and its mitigation.

The demo trains MiniLM on TREC -> movie sentiment -> SMS spam five times (naive and five
mitigations, seed 0) and writes the comparison; the README and docs/index.md quote its figures.
This test runs the real thing (about 5 minutes on 2 cores) and checks the claims they make.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retain.cli import main


@pytest.mark.slow
def test_demo_shows_forgetting_and_mitigation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo-out"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed
    rows = {r["variant"]: r for r in json.loads((out / "comparison.json").read_text())["rows"]}
    assert list(rows) == ["naive", "l2sp", "ewc", "lora", "progressive"]
    bwt = {name: row["backward_transfer"]["mean"] for name, row in rows.items()}
    assert bwt["naive"] <= -0.15  # TREC is forgotten
    best = max(bwt, key=lambda name: bwt[name])
    assert best != "naive"
    assert bwt[best] >= -0.05  # ... and kept by the best mitigation
    plasticity = {name: row["new_task_score"]["mean"] for name, row in rows.items()}
    assert plasticity[best] >= plasticity["naive"] - 0.1  # without giving up the new tasks
    for name in rows:
        assert (out / name / "seed-0" / "report.html").is_file()
    assert (out / "plots" / "pareto.png").is_file()
