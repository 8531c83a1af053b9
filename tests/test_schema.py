"""The published JSON Schemas: valid schemas, shipped, precise about bad records, and every file
small real runs write (run, comparison, audit, diagnose) validates against its format's schema."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

import retain
from retain.cli import main
from retain.errors import RetainError
from retain.experiment.audit import AuditConfig, run_audit
from retain.experiment.config import config_from_dict
from retain.experiment.diagnose import DiagnoseConfig, run_diagnose
from retain.experiment.runner import RunSpec, run_experiment
from retain.report.write import load_results, write_comparison_report
from retain.schema import (
    SCHEMAS,
    record_format,
    schema_for,
    validate_record,
    validate_written_records,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = Path(retain.__file__).parent / "schemas"
MLP: dict[str, Any] = {
    "name": "schema-mlp",
    "model": {"name": "mlp", "kind": "mlp", "hidden": [16]},
    "tasks": [
        {"dataset": "digits", "train": 120, "test": 60},
        {"dataset": "digits", "permutation": 1, "train": 120, "test": 60},
    ],
    "strategies": [{"name": "l2sp", "alpha": 0.01}],
    "training": {"lr": 1e-2, "batch_size": 20, "max_steps": 6},
    "monitor": {"max_degradation": 0.5, "eval_every": 2},
    "diagnostics": {"interference_every": 2, "interference_samples": 8, "shift": True},
    "checkpoints": {"enabled": False},
}
TINY: dict[str, Any] = {
    "samples": 4,
    "fisher_samples": 4,
    "batches": 2,
    "batch_size": 2,
    "max_length": 16,
    "max_tokens": 64,
}


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seeds of a tiny MLP run (monitor, interference, shift) and their comparison."""
    root = tmp_path_factory.mktemp("schema_runs")
    (root / "runs").mkdir()
    for seed in (0, 1):
        config = config_from_dict({**MLP, "seeds": [seed]})
        run_experiment(RunSpec(config, out=root / "runs" / f"seed{seed}", report=False))
    write_comparison_report([root / "runs" / "seed0", root / "runs" / "seed1"], root / "cmp")
    return root


@pytest.fixture(scope="module")
def run_record(written: Path) -> dict[str, Any]:
    """The first run's results.json (shared: deep-copy before changing)."""
    return load(written / "runs" / "seed0" / "results.json")


# -- the schemas themselves ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(SCHEMAS))
def test_every_schema_is_a_valid_versioned_json_schema(fmt: str) -> None:
    schema = schema_for(fmt)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("/" + SCHEMAS[fmt])
    assert schema["properties"]["format"] == {"const": fmt}
    assert SCHEMAS[fmt].endswith(f"-{fmt.rsplit('/', 1)[1]}.json")  # versioned with the format
    schema["title"] = "changed"
    assert schema_for(fmt)["title"] != "changed"  # a copy: the cache cannot be altered


def test_the_schema_folder_holds_exactly_the_known_schemas_and_is_shipped() -> None:
    assert sorted(p.name for p in SCHEMA_DIR.iterdir() if p.suffix == ".json") == sorted(
        SCHEMAS.values()
    )
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    package_data = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    assert '"schemas/*.json"' in package_data
    assert '"jsonschema>=' in pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]


# -- bad records --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"run": {"matrix": "x"}}, "has no known format (no 'format' key; known: retain.audit/1"),
        ({"format": "abc"}, "has no known format (found 'abc'; known: "),
        ([1, 2], "has no known format (not a JSON object;"),
    ],
)
def test_a_missing_or_unknown_format_is_a_one_line_error(data: object, expected: str) -> None:
    with pytest.raises(RetainError) as caught:
        validate_record(data, source="results.json")
    assert str(caught.value).startswith("results.json ")
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def _set(data: dict[str, Any], path: str, value: object) -> None:
    """Set (``value`` is not ``...``) or delete (``...``) the dotted ``path`` in ``data``."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target: Any = data
    for part in parents:
        target = target[part]
    if value is ...:
        del target[last]
    else:
        target[last] = value


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("run.matrix", "x", "run.matrix: 'x' is not of type 'array'"),
        ("run.matrix.1.0", "high", "run.matrix[1][0]: 'high' is not of type 'number', 'null'"),
        ("run.matrix", [], "run.matrix: [] should be non-empty"),
        ("run.tasks", ..., "run: 'tasks' is a required property"),
        ("run.logs.0.steps", "6", "run.logs[0].steps: '6' is not of type 'integer'"),
        ("score.higher_is_better", "yes", "score.higher_is_better: 'yes' is not of type 'boolean'"),
        ("seed", 1.5, "seed: 1.5 is not of type 'integer'"),
        ("run", ..., "'run' is a required property"),
        ("monitor", [], "monitor: [] is not of type 'object', 'null'"),
        ("budget", {"history": []}, "budget: 'max_degradation' is a required property"),
        ("drift.after.0", "x", "drift.after[0]: 'x' is not of type 'array'"),
        ("interference.records.0.cosine", "0.1", "interference.records[0].cosine: '0.1'"),
        ("format", "retain.run/2", "has no known format (found 'retain.run/2'"),
    ],
)
def test_a_broken_run_record_names_the_json_path(
    run_record: dict[str, Any], path: str, value: object, expected: str
) -> None:
    data = copy.deepcopy(run_record)
    _set(data, path, value)
    with pytest.raises(RetainError) as caught:
        validate_record(data, source="results.json")
    message = str(caught.value)
    assert expected in message
    assert message.startswith("results.json")
    assert "\n" not in message
    if "no known format" not in message:
        assert "(format retain.run/1" in message
        assert message.endswith("re-create it with `retain run`")


def test_a_long_offending_value_is_shortened(run_record: dict[str, Any]) -> None:
    data = copy.deepcopy(run_record)
    data["score"] = [data["run"]] * 3
    with pytest.raises(RetainError, match=r"score: \[\{'tasks'.{30,60}\.\.\. is not of type"):
        validate_record(data, source="results.json")


def test_a_broken_comparison_names_the_json_path(written: Path) -> None:
    data = load(written / "cmp" / "comparison.json")
    del data["rows"][0]["n"]
    data["runs"][0]["summary"]["forgetting"] = "none"
    with pytest.raises(RetainError, match=r"comparison.json: rows\[0\]: 'n' is a required") as c:
        validate_record(data, source="comparison.json")
    assert "and 1 more error)" in str(c.value)
    assert "re-create it with `retain report`" in str(c.value)


def test_expected_format_refuses_another_kind_of_file(written: Path) -> None:
    comparison = load(written / "cmp" / "comparison.json")
    validate_record(comparison, source="c.json", expected="retain.comparison/1")
    with pytest.raises(RetainError, match=r"is a retain.comparison/1 file, not retain.run/1"):
        validate_record(comparison, source="c.json", expected="retain.run/1")


# -- retain report validates --------------------------------------------------------------------


def test_report_of_an_invalid_results_json_exits_2_with_one_line(
    tmp_path: Path, written: Path, run_record: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(written / "runs" / "seed0", run)  # a real run directory, then broken
    broken = copy.deepcopy(run_record)
    broken["run"]["matrix"] = "x"
    (run / "results.json").write_text(json.dumps(broken), encoding="utf-8")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{run / 'results.json'}: run.matrix: 'x' is not of type 'array'" in err
    assert not (run / "report.html").exists()

    (run / "results.json").write_text('{"kind": "audit"}', encoding="utf-8")
    with pytest.raises(RetainError, match=r"not a run's results \(format 'retain.audit/1'"):
        load_results(run)
    (run / "results.json").write_text("{}", encoding="utf-8")
    with pytest.raises(RetainError, match=r"not a run's results \(no format"):
        load_results(run)


# -- real files ---------------------------------------------------------------------------------


def test_real_runs_and_their_comparison_validate(written: Path, run_record: dict[str, Any]) -> None:
    assert validate_written_records(written) == 3
    assert run_record["monitor"]["eval_every"] == 2
    assert run_record["interference"]["records"]
    assert run_record["shift"]["representation"] is None  # an MLP: skipped with a reason
    assert run_record["budget"] is None
    assert run_record["layer_lrs"] is None
    assert load_results(written / "runs" / "seed0").to_json() == run_record


def test_a_causal_lm_run_with_a_budget_and_a_monitor_validates(
    tiny_lm_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    base, _ = tiny_lm_dirs
    config = config_from_dict(
        {
            "name": "schema-lm",
            "model": {"name": str(base), "kind": "causal-lm"},
            "tasks": [{"dataset": "sms_spam", "train": 8, "test": 4, "max_length": 16}],
            "suite": {
                "probes": [{"kind": "perplexity", "dataset": "sms_spam", "n": 2, "max_length": 32}]
            },
            "strategies": [{"name": "l2sp", "alpha": 1.0, "budget": True}],
            "budget": {"max_degradation": 0.1, "every": 2},
            "monitor": {"max_degradation": 0.5, "eval_every": 2},
            "training": {"lr": 3e-4, "batch_size": 4, "max_steps": 2},
            "checkpoints": {"enabled": False},
        }
    )
    run_experiment(RunSpec(config, out=tmp_path / "run", report=False))
    data = load(tmp_path / "run" / "results.json")
    assert data["budget"]["history"][0]
    assert data["run"]["logs"][0]["monitor"]["history"]
    assert validate_written_records(tmp_path) == 1


def test_a_real_audit_validates(tiny_lm_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = tiny_lm_dirs
    run_audit(AuditConfig(str(base), str(tuned), out=tmp_path / "audit", size="quick"))
    audit = load(tmp_path / "audit" / "results.json")
    assert record_format(audit) == "retain.audit/1"
    assert validate_written_records(tmp_path) == 1
    audit["capabilities"][0]["worsened"] = None
    with pytest.raises(RetainError, match=r"capabilities\[0\].worsened: None is not of type"):
        validate_record(audit, source="results.json")


def test_a_real_diagnosis_validates(tiny_lm_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    base, tuned = tiny_lm_dirs
    config = DiagnoseConfig(  # short SMS texts as the general text: fast to tokenize
        base=str(base), tuned=str(tuned), general="sms_spam", out=tmp_path / "diagnose", **TINY
    )
    run_diagnose(config)
    diagnosis = load(tmp_path / "diagnose" / "results.json")
    assert diagnosis["output"] is not None
    assert diagnosis["importance"] is None  # needs --data: skipped with a reason, null
    assert "importance" in diagnosis["skipped"]
    assert validate_written_records(tmp_path) == 1
    diagnosis["drift"]["total"]["numel"] = "many"
    with pytest.raises(RetainError, match=r"drift.total.numel: 'many' is not of type 'integer'"):
        validate_record(diagnosis, source="results.json")


def test_validate_written_records_skips_foreign_json(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text("{}", encoding="utf-8")
    (tmp_path / "results.json").write_text("{", encoding="utf-8")
    (tmp_path / "other.json").write_text('{"format": "retain.run/1"}', encoding="utf-8")
    assert validate_written_records(tmp_path) == 0
    (tmp_path / "a" / "comparison.json").write_text('{"format": "retain.comparison/1"}')
    with pytest.raises(RetainError, match=r"comparison.json: 'score' is a required property"):
        validate_written_records(tmp_path)
