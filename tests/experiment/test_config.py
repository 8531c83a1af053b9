"""Experiment configs: validation with one-line errors, overrides, and the resolved YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from retain.errors import RetainError
from retain.experiment.config import (
    apply_overrides,
    config_from_dict,
    config_to_yaml,
    load_config,
)
from retain.experiment.shipped import resolve_config_path


def base() -> dict[str, Any]:
    return {
        "name": "t",
        "model": {"name": "mlp", "kind": "mlp", "hidden": [8]},
        "tasks": [{"dataset": "digits", "train": 50, "test": 20}],
    }


def test_defaults_fill_in_and_the_yaml_round_trips() -> None:
    config = config_from_dict(base())
    assert config.training.lr == 1e-4
    assert config.seeds == [0]
    assert config.suite is None
    assert config.variant_label == "naive"
    again = config_from_dict(yaml.safe_load(config_to_yaml(config)))
    assert again == config
    assert config.output_dir() == Path("runs") / "t"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"training": {"lr": 1e-3, "lr_decay": 0.5}}, "training.lr_decay: unknown setting"),
        ({"training": {"lr": -1}}, "training.lr: Input should be greater than 0"),
        ({"model": {"kind": "mlp"}}, "model.name: missing"),
        ({"tasks": []}, "tasks: List should have at least 1 item"),
        ({"strategies": [{"strength": 3}]}, "needs a 'name'"),
        ({"budget": {"max_degradation": 0.1}}, "budget needs a suite"),
        (
            {"strategies": [{"name": "ewc", "budget": True}]},
            "strategies marks a strategy `budget: true` but there is no budget section",
        ),
        ({"name": "has space"}, "name: String should match pattern"),
        ({"training": {"lrr": 3e-4}}, "training.lrr: unknown setting; did you mean 'lr'?"),
        (
            {"sweep": {"variants": {"b": [{"name": "ewc", "budget": True}]}}},
            "sweep.variants.b marks a strategy `budget: true` but there is no budget section",
        ),
        ({"tasks": [{"dataset": "x", "tset": 3}]}, "tasks.0.tset: unknown setting; did you mean"),
        ({"modle": {}}, "modle: unknown setting; did you mean 'model'?"),
        ({"model": {"name": "m", "kind": "causal"}}, "did you mean 'causal-lm'?"),
        ({"training": {"precision": "fp8"}}, "unknown value 'fp8'; did you mean 'fp32'?"),
    ],
)
def test_bad_settings_give_one_line_naming_the_setting(
    change: dict[str, Any], expected: str
) -> None:
    data = {**base(), **change}
    with pytest.raises(RetainError) as info:
        config_from_dict(data, source="x.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("x.yaml: ")
    assert expected in message


def test_two_tasks_of_one_name_are_refused() -> None:
    data = base()
    data["tasks"] = [{"dataset": "digits"}, {"dataset": "digits"}]
    with pytest.raises(RetainError, match="task name 'digits' appears twice"):
        config_from_dict(data)
    data["tasks"][1]["permutation"] = 3
    assert [t.label for t in config_from_dict(data).tasks] == ["digits", "digits-perm3"]


def test_overrides_reach_nested_keys_and_list_items() -> None:
    data = {**base(), "strategies": [{"name": "l2sp", "alpha": 0.1}]}
    out = apply_overrides(
        data,
        [
            "training.lr=3e-4",
            "tasks.0.train=7",
            "strategies.0.alpha=1e2",
            "seeds=[1, 2]",
            "monitor.max_degradation=0.1",
        ],
    )
    config = config_from_dict(out)
    assert config.training.lr == 3e-4
    assert config.tasks[0].train == 7
    assert config.strategies[0]["alpha"] == 100.0
    assert config.seeds == [1, 2]
    assert config.monitor is not None
    assert config.monitor.max_degradation == 0.1
    assert data["strategies"][0]["alpha"] == 0.1  # the input is not changed


def test_overrides_reach_keys_that_hold_dots() -> None:
    variants = {"l2sp-0.1": [{"name": "l2sp", "alpha": 0.1}], "l2sp": [{"name": "l2sp"}]}
    data = {**base(), "sweep": {"variants": variants}}
    out = apply_overrides(
        data, ["sweep.variants.l2sp-0.1.0.alpha=0.5", "sweep.variants.l2sp.0.alpha=2"]
    )
    assert out["sweep"]["variants"] == {
        "l2sp-0.1": [{"name": "l2sp", "alpha": 0.5}],
        "l2sp": [{"name": "l2sp", "alpha": 2}],
    }
    replaced = apply_overrides(data, ["sweep.variants.l2sp-0.1=[]"])
    assert replaced["sweep"]["variants"]["l2sp-0.1"] == []
    assert "l2sp-0" not in replaced["sweep"]["variants"]


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("training.lr", "is not key=value"),
        ("tasks.5.train=3", "needs a list index 0..0"),
        ("name.x=1", "name is not a section"),
    ],
)
def test_bad_overrides_are_named(item: str, expected: str) -> None:
    with pytest.raises(RetainError, match=expected):
        apply_overrides(base(), [item])


def test_load_config_reads_files_and_shipped_names(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(base()))
    assert load_config(path, ["training.max_steps=3"]).training.max_steps == 3
    assert resolve_config_path("demo") == resolve_config_path("configs/demo.yaml").resolve()
    with pytest.raises(RetainError, match="does not exist and is no shipped config"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("name: [unclosed")
    with pytest.raises(RetainError, match="not valid YAML at line 1"):
        load_config(path)
    path.write_text("- a list")
    with pytest.raises(RetainError, match="must be a YAML mapping"):
        load_config(path)


def test_every_training_and_monitor_default_is_the_engines() -> None:
    """One source: a setting left out of the YAML means what TrainConfig / MonitorConfig mean."""
    from dataclasses import fields

    from retain.training.loop import TrainConfig
    from retain.training.monitor import MonitorConfig

    config = config_from_dict({**base(), "monitor": {}})
    engine, monitor = TrainConfig(), MonitorConfig()
    shared = [f.name for f in fields(TrainConfig) if f.name in type(config.training).model_fields]
    assert len(shared) >= 10
    for name in shared:
        if name != "epochs":  # None in YAML: derived from max_steps (1 epoch without it)
            assert getattr(config.training, name) == getattr(engine, name), name
    assert config.monitor is not None
    for f in fields(MonitorConfig):
        assert getattr(config.monitor, f.name) == getattr(monitor, f.name), f.name
