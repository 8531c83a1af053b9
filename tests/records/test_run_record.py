"""The run and comparison records: JSON round trips, NaN as null, earlier forms still read,
one-line errors, and the shipped schemas generated from the types."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from retain.errors import RetainError
from retain.records.comparison import ComparisonRecord
from retain.records.run import RunRecord, TaskLog
from retain.records.schemas import record_types, schema_text
from retain.schema import SCHEMAS


def _run_data() -> dict[str, Any]:
    """A hand-made ``results.json``: two tasks, an undefined forward transfer, a monitor."""
    evaluation = {"step": 0, "scores": {"general": 0.9}, "degradation": {"general": 0.0}}
    monitor = {"stopped": False, "reason": "completed", "history": [evaluation]}
    logs = [
        {"task": "a", "steps": 2, "losses": [1.0, 0.5], "lrs": [0.1, 0.1], "stopped": False},
        {"task": "b", "steps": 1, "losses": [None], "lrs": [0.1], "monitor": monitor},
    ]
    return {
        "format": "retain.run/1",
        "name": "hand",
        "variant": "naive",
        "seed": 0,
        "model": "mlp",
        "score": {"name": "accuracy", "higher_is_better": True},
        "run": {
            "tasks": ["a", "b"],
            "matrix": [[0.9, 0.1], [0.5, 0.8]],
            "baseline": [0.1, 0.1],
            "metrics": {"average_accuracy": 0.65, "forward_transfer": None},
            "logs": logs,
            "strategies": "[]",
            "config": {"lr": 0.1},
            "seed": 0,
        },
        "seconds": 3.0,
    }


def test_a_run_record_reads_nan_as_null_and_writes_it_back(tmp_path: Path) -> None:
    record = RunRecord.from_json(_run_data(), source="results.json")
    assert math.isnan(record.run.metrics.forward_transfer)
    assert math.isnan(record.run.logs[1].losses[0])
    assert record.run.logs[0].steps == 2  # derived from the losses, written for readers
    assert record.run.logs[1].monitor is not None
    assert record.run.logs[1].monitor.history[0].scores == {"general": 0.9}
    record.write(tmp_path / "results.json")
    text = (tmp_path / "results.json").read_text(encoding="utf-8")
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert data["run"]["metrics"]["forward_transfer"] is None
    assert data["run"]["logs"][1]["losses"] == [None]
    assert data["run"]["logs"][1]["steps"] == 1
    assert RunRecord.load(tmp_path / "results.json").to_json() == record.to_json() == data


def test_an_earlier_empty_suite_reads_as_none_and_unknown_keys_are_kept() -> None:
    data = _run_data()
    data["run"]["suite"] = {}  # how files before the typed records said "no suite"
    data["from_a_newer_retain"] = {"x": 1}
    record = RunRecord.from_json(data)
    assert record.run.suite is None
    assert record.to_json()["from_a_newer_retain"] == {"x": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "retain.comparison/1"}, "is a retain.comparison/1 file, not retain.run/1"),
        ({"format": "retain.run/9"}, "has no known format"),
        ({"seed": -1}, "seed: -1 is less than the minimum of 0"),
        ({"score": None}, "score: None is not of type 'object'"),
    ],
)
def test_a_wrong_run_record_is_one_line(change: dict[str, Any], message: str) -> None:
    with pytest.raises(RetainError) as caught:
        RunRecord.from_json({**_run_data(), **change}, source="results.json")
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    assert text.startswith("results.json")


def test_a_task_log_grows_while_training_and_keeps_its_step_count() -> None:
    log = TaskLog(task="t")
    log.losses.append(0.5)
    log.losses.append(math.nan)
    assert log.steps == 2
    assert TaskLog(task="u").losses == []  # every log gets its own list
    assert log.to_json()["losses"] == [0.5, None]


def test_a_comparison_record_round_trips() -> None:
    figure = {"mean": 0.5, "sd": None, "low": None, "high": None}
    row: dict[str, object] = {"variant": "naive", "strategies": "[]", "seeds": [0], "n": 1}
    row.update(pareto=True, reference=None, of_joint=None)  # a variant; no joint reference
    keys = ("new_task_score", "average_accuracy", "backward_transfer", "forgetting")
    row.update(dict.fromkeys((*keys, "capability_degradation", "seconds"), figure))
    summary = dict.fromkeys((*keys, "capability_degradation", "seconds"), 0.25)
    data = {
        "format": "retain.comparison/1",
        "score": {"name": "accuracy", "higher_is_better": True},
        "rows": [row],
        "runs": [{"dir": "runs/naive", "variant": "naive", "seed": 0, "summary": summary}],
    }
    record = ComparisonRecord.from_json(data)
    assert math.isnan(record.rows[0].forgetting.sd)
    assert record.rows[0].figure("forgetting").mean == 0.5
    assert record.to_json() == data
    del figure["low"], figure["high"]  # every figure: a file written before intervals over seeds
    assert math.isnan(ComparisonRecord.from_json(data).rows[0].forgetting.high)


@pytest.mark.parametrize("format", sorted(SCHEMAS))
def test_the_shipped_schema_is_the_one_the_type_generates(format: str) -> None:
    """Regenerate with ``python -m retain.records.schemas`` after changing a record type."""
    shipped = Path(__file__).resolve().parents[2] / "src" / "retain" / "schemas" / SCHEMAS[format]
    assert shipped.read_text(encoding="utf-8") == schema_text(record_types()[format]), (
        f"{shipped.name} differs from the {format} type: run `python -m retain.records.schemas`"
    )
