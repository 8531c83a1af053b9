"""The diagnose record (``retain.diagnose/1``): JSON round trip, ``NaN`` as ``null``, skipped
sections as ``null``, one-line errors for a file of another format or a wrong value, and the
report of a record read back from disk."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from retain.errors import RetainError
from retain.records.diagnose import DiagnoseRecord
from retain.records.schemas import generate
from retain.report.diagnose_report import write_diagnose_report
from retain.report.diagnose_summary import diagnose_table
from retain.schema import schema_for, validate_record


def _group(name: str, relative: float | None) -> dict[str, Any]:
    return {
        "name": name,
        "numel": 64,
        "rms": 0.0 if relative is None else 0.01,
        "relative": relative,
        "delta_norm": 0.08,
        "base_norm": 0.0 if relative is None else 0.08 / relative,
    }


def _token(token_id: int, token: str, change: float) -> dict[str, Any]:
    return {
        "token_id": token_id,
        "token": token,
        "change": change,
        "base": 0.1,
        "tuned": 0.1 + change,
    }


def _data() -> dict[str, Any]:
    """A diagnosis as `retain diagnose` writes it, with undefined values (``null``) in every
    section."""
    model = {
        "name": "base",
        "origin": "local",
        "path": "/models/base",
        "class": "LlamaForCausalLM",
        "parameters": 4096,
        "tokenizer": {"class": "LlamaTokenizerFast", "size": 256},
    }
    quadrants = {"old_only": 3, "new_only": 2, "both": 1, "neither": 122}
    return {
        "format": "retain.diagnose/1",
        "kind": "diagnose",
        "retain_version": "0.1.0",
        "created": "2025-01-02T03:04:05+00:00",
        "base": model,
        "tuned": {**model, "name": "tuned", "path": "/models/tuned"},
        "settings": {
            "data": "sms_spam",
            "general": "general_text",
            "model_kind": "causal-lm",
            "samples": 4,
            "fisher_samples": 4,
            "batches": 2,
            "batch_size": 2,
            "max_length": 16,
            "max_tokens": 64,
            "top": 0.1,
            "exclude": None,
            "device": "cpu",
        },
        "drift": {
            "total": _group("total", 0.05),
            "layers": [_group("model.embed_tokens", 0.02), _group("model.norm", None)],
            "modules": [_group("model.embed_tokens", 0.02)],
            "excluded": {"lm_head.weight": "not in the base model (a new head or adapter)"},
        },
        "importance": {
            "layers": [
                {
                    "name": "model.embed_tokens",
                    "numel": 128,
                    "old_mass": 2.0,
                    "new_mass": 0.0,
                    "old_share": 1.0,
                    "new_share": 0.0,
                    "old_mean": 2.0 / 128,
                    "new_mean": 0.0,
                    "overlap": None,
                    "quadrants": quadrants,
                }
            ],
            "quadrants": quadrants,
            "thresholds": {"old": 0.001, "new": 0.0},
            "top": 0.1,
            "overlap": None,
            "numel": 128,
            "scatter": {"old": [0.0, 0.002, 0.01], "new": [0.0, 0.0, 0.003]},
        },
        "interference": {
            "cosine": -0.25,
            "layers": {"model.embed_tokens": -0.25, "model.norm": None},
            "pair_cosines": [-0.5, None],
            "conflicting": 0.5,
            "layer_conflicting": {"model.embed_tokens": 0.5, "model.norm": 0.0},
        },
        "representation": [
            {"index": 0, "name": "embeddings", "cka": 0.97},
            {"index": 1, "name": "model.layers.0", "cka": None},
        ],
        "output": {
            "positions": 12,
            "kl_mean": 0.02,
            "kl_median": 0.01,
            "kl_p90": None,
            "kl_max": 0.1,
            "entropy_base": 5.1,
            "entropy_tuned": 5.0,
            "entropy_change": -0.1,
            "gained": [_token(7, " the", 0.01)],
            "lost": [_token(9, "\n", -0.02)],
            "kl_sample": [0.01, None, 0.03],
        },
        "skipped": {},
        "warnings": ["base and tuned use different tokenizers"],
        "timings": {"loading": 0.5, "drift": None},
        "seconds": 1.25,
    }


def test_round_trip_keeps_every_key_and_value() -> None:
    data = _data()
    record = DiagnoseRecord.from_json(copy.deepcopy(data), source="results.json")
    assert record.to_json() == data
    again = DiagnoseRecord.from_json(record.to_json())
    assert again.to_json() == data
    assert record.base.class_ == "LlamaForCausalLM"
    assert record.base.tokenizer is not None
    assert record.base.tokenizer.size == 256
    assert record.importance is not None
    assert record.importance.thresholds.old == 0.001
    assert record.importance.quadrants.both == 1
    validate_record(record.to_json(), source="results.json")


def test_null_is_nan_in_memory_and_nan_is_null_on_disk(tmp_path: Path) -> None:
    record = DiagnoseRecord.from_json(_data())
    assert record.drift is not None
    assert math.isnan(record.drift.layers[1].relative)
    assert record.representation is not None
    assert math.isnan(record.representation[1].cka)
    assert record.interference is not None
    assert math.isnan(record.interference.layers["model.norm"])
    assert math.isnan(record.interference.pair_cosines[1])
    assert record.output is not None
    assert math.isnan(record.output.kl_p90)
    assert math.isnan(record.timings["drift"])
    record.output.kl_mean = math.nan
    record.drift.total.rms = math.inf
    data = record.to_json()
    assert data["output"]["kl_mean"] is None
    assert data["drift"]["total"]["rms"] is None
    json.dumps(data, allow_nan=False)  # strict JSON
    path = tmp_path / "results.json"
    record.write(path)
    text = path.read_text(encoding="utf-8")
    assert "NaN" not in text
    assert "Infinity" not in text
    assert DiagnoseRecord.load(path).to_json() == data


def test_sections_not_computed_are_null() -> None:
    data = _data()
    data.update(drift=None, importance=None, interference=None, representation=None, output=None)
    data["skipped"] = {"importance": "needs the new task's data (--data NAME)"}
    record = DiagnoseRecord.from_json(copy.deepcopy(data))
    assert record.drift is None
    assert record.output is None
    assert record.to_json() == data
    table = diagnose_table(record).splitlines()
    assert table[0] == "importance:     not computed: needs the new task's data (--data NAME)"
    assert [line.split(":")[0] for line in table] == [
        "importance", "drift", "interference", "representation", "output",
    ]  # fmt: skip


def test_unknown_keys_are_kept() -> None:
    data = _data()
    data["settings"]["new_option"] = 3
    data["representation"][0]["extra"] = "kept"
    assert DiagnoseRecord.from_json(copy.deepcopy(data)).to_json() == data


def test_a_file_of_another_format_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(RetainError) as error:
        DiagnoseRecord.from_json({**_data(), "format": "retain.run/1"}, source="x.json")
    message = str(error.value)
    assert "\n" not in message
    assert "x.json is a retain.run/1 file, not retain.diagnose/1" in message
    assert "`retain diagnose`" in message
    with pytest.raises(RetainError, match="no known format") as error:
        DiagnoseRecord.from_json({"kind": "diagnose"}, source="x.json")
    assert "\n" not in str(error.value)
    path = tmp_path / "results.json"
    path.write_text(json.dumps({**_data(), "format": "retain.diagnose/9"}), encoding="utf-8")
    with pytest.raises(RetainError, match=r"found 'retain\.diagnose/9'") as error:
        DiagnoseRecord.load(path)
    assert str(path) in str(error.value)
    with pytest.raises(RetainError, match="does not exist"):
        DiagnoseRecord.load(tmp_path / "missing.json")


def test_a_wrong_value_is_a_one_line_error_naming_its_path() -> None:
    data = _data()
    data["drift"]["total"]["numel"] = "many"
    with pytest.raises(RetainError, match=r"drift.total.numel: 'many' is not of type 'integer'"):
        DiagnoseRecord.from_json(data, source="results.json")
    data = _data()
    del data["seconds"]
    with pytest.raises(RetainError, match="'seconds' is a required property") as error:
        DiagnoseRecord.from_json(data, source="results.json")
    assert "\n" not in str(error.value)


def test_undefined_values_read_back_show_as_n_a(tmp_path: Path) -> None:
    record = DiagnoseRecord.from_json(_data())
    table = diagnose_table(record)
    assert "most drifted layer model.embed_tokens (0.02)" in table  # the undefined one left out
    assert "overlap n/a; 1 (0.78%) parameters critical for both" in table
    assert "(p90 n/a)" in table
    assert "lowest CKA 0.9700 at embeddings" in table
    record.write(tmp_path / "saved.json")
    write_diagnose_report(tmp_path / "report", tmp_path / "saved.json")  # read back from disk
    saved = json.loads((tmp_path / "report" / "results.json").read_text(encoding="utf-8"))
    assert saved == _data()
    text = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "<td>model.layers.0</td><td>n/a</td><td>n/a</td>" in text  # CKA and 1 - CKA
    assert {p.stem for p in (tmp_path / "report" / "plots").glob("*.png")} == {
        "drift", "importance_layers", "importance_scatter", "interference", "representation",
        "output_kl",
    }  # fmt: skip


def test_the_generated_schema_names_the_shipped_fields() -> None:
    generated, shipped = generate(DiagnoseRecord), schema_for("retain.diagnose/1")
    assert set(generated["properties"]) == set(shipped["properties"])
    assert set(generated["required"]) <= set(shipped["required"])
    assert generated["title"] == shipped["title"]
