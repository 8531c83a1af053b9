"""The audit record (``retain.audit/1``): JSON round trip, ``NaN`` as ``null``, the legacy
``kind``-only file, one-line errors for a file of another format, and the report's ``n/a``."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from retain.errors import RetainError
from retain.records.audit import AuditRecord, Capability
from retain.report.audit_report import audit_markdown, audit_table
from retain.schema import validate_record


def _data() -> dict[str, Any]:
    """An audit's results.json as `retain audit` writes it (one undefined relative value)."""
    model = {
        "name": "smollm2",
        "origin": "registry",
        "path": "/cache/models/smollm2-135m",
        "class": "LlamaForCausalLM",
        "parameters": 134515008,
        "tokenizer": {"class": "GPT2TokenizerFast", "size": 49152},
    }
    return {
        "format": "retain.audit/1",
        "kind": "audit",
        "retain_version": "0.1.0",
        "created": "2025-01-02T03:04:05+00:00",
        "suite": {"name": "general", "description": "text and zero-shot probes", "size": "quick"},
        "base": model,
        "tuned": {**model, "name": "tuned", "origin": "local", "path": "/runs/tuned"},
        "tolerance": 0.02,
        "capabilities": [
            {
                "name": "general_text",
                "metric": "perplexity",
                "higher_is_better": False,
                "before": 10.0,
                "after": 12.0,
                "change": 2.0,
                "relative_change": 0.2,
                "degradation": 2.0,
                "relative_degradation": 0.2,
                "worsened": True,
                "verdict": "WORSE",
                "interval": {
                    "low": 0.15,
                    "high": 0.25,
                    "level": 0.95,
                    "p_value": 0.001,
                    "test": "permutation",
                    "examples": 40,
                    "resamples": 1000,
                },
                "examples_needed": None,
                "details_before": {"n_tokens": 100, "bits_per_byte": 1.25, "extra": None},
                "details_after": {"n_tokens": 100, "bits_per_byte": 1.5, "extra": None},
            },
            {
                "name": "zero_score",
                "metric": "accuracy",
                "higher_is_better": True,
                "before": 0.0,
                "after": 0.5,
                "change": 0.5,
                "relative_change": None,
                "degradation": -0.5,
                "relative_degradation": None,
                "worsened": False,
                "verdict": "WITHIN",
                "interval": None,
                "examples_needed": None,
                "details_before": {"n": 8},
                "details_after": {"n": 8},
            },
        ],
        "verdict": {
            "degraded": True,
            "text": "FORGOT: 1 of 2 capabilities degraded by more",
            "outcome": "FORGOT",
        },
        "warnings": [],
        "seconds": 12.5,
    }


def test_a_record_round_trips_through_json() -> None:
    data = _data()
    record = AuditRecord.from_json(data)
    assert record.to_json() == data
    assert list(record.to_json()) == list(data)  # same keys in the same order as on disk
    again = AuditRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again.to_json() == record.to_json()
    first = copy.deepcopy(data)
    first["capabilities"] = first["capabilities"][:1]  # no NaN: the models compare equal
    assert AuditRecord.from_json(AuditRecord.from_json(first).to_json()) == AuditRecord.from_json(
        first
    )


def test_null_reads_as_nan_and_nan_writes_as_null() -> None:
    record = AuditRecord.from_json(_data())
    undefined = record.capabilities[1]
    assert math.isnan(undefined.relative_change)
    assert math.isnan(undefined.relative_degradation)
    assert record.capabilities[1].details_before == {"n": 8}
    made = Capability(
        name="x",
        metric="accuracy",
        higher_is_better=True,
        before=0.0,
        after=0.0,
        change=0.0,
        relative_change=math.nan,
        degradation=0.0,
        relative_degradation=math.inf,
        worsened=False,
        details_before={"nll": math.nan},
    )
    out = made.to_json()
    assert out["relative_change"] is None
    assert out["relative_degradation"] is None
    assert out["details_before"] == {"nll": None}
    assert out["details_after"] == {}
    json.dumps(out, allow_nan=False)  # strict JSON


def test_an_audit_file_from_before_the_format_key_still_loads(tmp_path: Path) -> None:
    legacy = _data()
    del legacy["format"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(legacy), encoding="utf-8")
    record = AuditRecord.load(path)
    assert record.format == "retain.audit/1"
    assert record.kind == "audit"
    assert record.to_json() == _data()  # written back, it gains the format key


def test_write_then_load_gives_the_same_file(tmp_path: Path) -> None:
    record = AuditRecord.from_json(_data())
    record.write(tmp_path / "results.json")
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert saved == _data()
    assert AuditRecord.load(tmp_path / "results.json").to_json() == record.to_json()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"format": "retain.run/1"},
            "results.json is a retain.run/1 file, not retain.audit/1; "
            "point at a file `retain audit` wrote",
        ),
        ({"format": "retain.audit/9"}, "results.json has no known format (found 'retain.audit/9'"),
        ({"kind": "run", "format": None}, "results.json has no known format (found None"),
        ({"tolerance": 2.0}, "results.json: tolerance: 2.0 is greater than or equal to"),
        ({"suite": {"name": "general"}}, "results.json: suite: 'size' is a required property"),
    ],
)
def test_a_wrong_file_is_a_one_line_error(change: dict[str, Any], message: str) -> None:
    data = {**_data(), **change}
    with pytest.raises(RetainError) as caught:
        AuditRecord.from_json(data, source="results.json")
    text = str(caught.value)
    assert text.startswith(message)
    assert "\n" not in text


def test_every_record_it_writes_matches_the_shipped_schema() -> None:
    validate_record(AuditRecord.from_json(_data()).to_json(), source="results.json")


def test_the_report_shows_undefined_values_as_n_a() -> None:
    record = AuditRecord.from_json(_data())
    table = audit_table(record)
    assert "n/a" in table.splitlines()[3]  # zero_score: relative change undefined
    assert "+20.0%" in table.splitlines()[2]
    markdown = audit_markdown(record)
    row = (
        "| general_text | perplexity | lower | 10 | 12 | +2 | +20.0% | +20.0% [+15.0, +25.0] "
        "| WORSE |"
    )
    assert row in markdown
    assert "interval [+15.00%, +25.00%] over 40 paired examples" in markdown
    assert "- before: n_tokens = 100, bits_per_byte = 1.25, extra = None" in markdown
    assert "`smollm2` (LlamaForCausalLM, 134,515,008 parameters, registry)" in markdown


def test_a_file_from_before_intervals_reads_and_reports_the_point_verdict() -> None:
    data = _data()
    for cap in data["capabilities"]:
        for key in ("verdict", "interval", "examples_needed"):
            del cap[key]
    del data["verdict"]["outcome"]
    record = AuditRecord.from_json(data)
    assert record.capabilities[0].verdict is None
    assert record.verdict.outcome is None
    lines = audit_table(record).splitlines()
    assert lines[2].endswith("WORSE")
    assert lines[3].endswith("ok")
