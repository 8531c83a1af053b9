"""``retain sweep``: variant resolution, grids, seeds, and a real two-variant sweep."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from retain.errors import RetainError
from retain.experiment.config import config_from_dict
from retain.experiment.sweep import SweepSpec, parse_seeds, run_sweep, sweep_variants


def config(**change: Any) -> Any:
    data: dict[str, Any] = {
        "name": "sw",
        "model": {"name": "mlp", "kind": "mlp", "hidden": [16]},
        "tasks": [
            {"dataset": "digits", "train": 120, "test": 60},
            {"dataset": "digits", "permutation": 1, "train": 120, "test": 60},
        ],
        "training": {"lr": 1e-2, "batch_size": 20, "max_steps": 5},
        "strategies": [{"name": "ewc", "strength": 50.0, "fisher_samples": 32}],
        "checkpoints": {"enabled": False},
        **change,
    }
    return config_from_dict(data)


def test_named_variants_take_the_configs_parameters() -> None:
    variants = sweep_variants(config(), ["naive", "ewc", "l2sp"], [])
    assert variants == {
        "naive": [],
        "ewc": [{"name": "ewc", "strength": 50.0, "fisher_samples": 32}],
        "l2sp": [{"name": "l2sp"}],
    }
    custom = config(sweep={"variants": {"light": [{"name": "l2sp", "alpha": 1e-3}]}})
    assert sweep_variants(custom, None, []) == {"light": [{"name": "l2sp", "alpha": 1e-3}]}
    assert sweep_variants(config(), None, []) == {"ewc": config().strategies}
    with pytest.raises(RetainError, match="did you mean 'ewc'"):
        sweep_variants(config(), ["ewcc"], [])
    with pytest.raises(RetainError, match=r"did you mean 'light'.*sweep.variants \(light\)"):
        sweep_variants(custom, ["lihgt"], [])


def test_grids_multiply_the_variants_that_use_the_strategy() -> None:
    variants = sweep_variants(
        config(), ["naive", "ewc"], ["ewc.strength=1e2,1e3", "ewc.fisher_samples=16,64"]
    )
    assert list(variants) == [
        "naive",
        "ewc strength=100.0 fisher_samples=16",
        "ewc strength=100.0 fisher_samples=64",
        "ewc strength=1000.0 fisher_samples=16",
        "ewc strength=1000.0 fisher_samples=64",
    ]
    assert variants["ewc strength=1000.0 fisher_samples=16"] == [
        {"name": "ewc", "strength": 1000.0, "fisher_samples": 16}
    ]
    with pytest.raises(RetainError, match="no variant uses 'agem'"):
        sweep_variants(config(), ["naive"], ["agem.memory_size=8"])
    with pytest.raises(RetainError, match=r"is not strategy\.parameter=v1,v2"):
        sweep_variants(config(), ["ewc"], ["strength=1"])


def test_seeds_are_a_count_or_a_list() -> None:
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("4,2") == [4, 2]
    for bad in ("0", "x", ","):
        with pytest.raises(RetainError, match="--seeds"):
            parse_seeds(bad)


def test_a_sweep_runs_every_variant_and_seed_then_compares(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    tuned = config(sweep={"settings": {"ewc": ["training.lr=5e-3"]}})
    spec = SweepSpec(tuned, strategies=["naive", "ewc"], seeds=[0, 1], out=out)
    report = run_sweep(spec)
    assert report == out / "report.html"
    runs = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("results.json"))
    assert runs == ["ewc/seed-0", "ewc/seed-1", "naive/seed-0", "naive/seed-1"]
    comparison = json.loads((out / "comparison.json").read_text())
    assert "naive" in json.dumps(comparison)
    naive0 = json.loads((out / "naive/seed-0/results.json").read_text())
    assert naive0["variant"] == "naive"
    ewc1 = json.loads((out / "ewc/seed-1/results.json").read_text())
    assert "ewc" in ewc1["run"]["strategies"]
    assert ewc1["seed"] == 1
    assert ewc1["run"]["config"]["lr"] == 5e-3  # the variant's own settings
    assert naive0["run"]["config"]["lr"] == 1e-2
    assert naive0["run"]["matrix"] != ewc1["run"]["matrix"]

    lines: list[str] = []
    run_sweep(
        SweepSpec(tuned, strategies=["naive", "ewc"], seeds=[0, 1], out=out, say=lines.append)
    )
    assert sum("finished earlier, reused" in line for line in lines) == 4
    with pytest.raises(RetainError, match="holds a sweep of other settings"):
        run_sweep(SweepSpec(config(), strategies=["naive"], seeds=[0], out=out))


def test_a_bad_variant_fails_before_any_run(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    spec = SweepSpec(config(), strategies=["naive", "ewc"], grid=["ewc.strenght=1,2"], out=out)
    with pytest.raises(RetainError, match=r"variant 'ewc strenght=1'.*did you mean 'strength'"):
        run_sweep(spec)
    assert not out.exists()
