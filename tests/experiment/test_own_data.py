"""A permuted-image sequence from the user's own files, run from YAML with ``retain sweep``
(naive, ewc, replay, agem), gives exactly the matrices of the registry path; class-incremental
tasks keep only their classes; a text task from a file says what it held out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from retain.assets.datasets import load_dataset
from retain.cli import main
from retain.experiment.build import build_experiment
from retain.experiment.config import config_from_dict

pytestmark = pytest.mark.slow

STRATEGIES = "naive,ewc,replay,agem"


def _config(dataset: str) -> dict[str, Any]:
    return {
        "name": "own-images",
        "model": {"name": "mlp", "kind": "mlp", "hidden": [32]},
        "tasks": [
            {"dataset": dataset, "permutation": p, "name": f"perm{p}", "train": 200, "test": 100}
            for p in (1, 2)
        ],
        "training": {"lr": 1e-2, "batch_size": 20, "max_steps": 8},
        "checkpoints": {"enabled": False},
        "seeds": [0],
    }


def _matrices(folder: Path) -> dict[str, Any]:
    found = {}
    for results in sorted(folder.glob("*/seed-0/results.json")):
        found[results.parent.parent.name] = json.loads(results.read_text())["run"]["matrix"]
    return found


def test_a_sweep_over_an_npz_equals_the_registry_sweep(tmp_path: Path) -> None:
    data = load_dataset("mnist")
    arrays = {}
    for split in ("train", "test"):
        pixels = np.asarray(data[split]["pixels"], dtype=np.float32)
        arrays[f"x_{split}"] = np.rint(pixels * 255).astype(np.uint8).reshape(-1, 28, 28)
        arrays[f"y_{split}"] = np.asarray(data[split]["label"])
    np.savez_compressed(tmp_path / "mnist.npz", **arrays)
    for name, dataset in (("own", str(tmp_path / "mnist.npz")), ("registry", "mnist")):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(_config(dataset)))
        argv = ["sweep", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / name)]
        assert main([*argv, "--strategies", STRATEGIES]) == 0
    own, registry = _matrices(tmp_path / "own"), _matrices(tmp_path / "registry")
    assert sorted(own) == ["agem", "ewc", "naive", "replay"]
    assert own == registry


def test_class_incremental_tasks_keep_their_classes() -> None:
    tasks = [{"dataset": "digits", "classes": [2 * t, 2 * t + 1]} for t in range(3)]
    config = config_from_dict({**_config("digits"), "tasks": tasks})
    built = build_experiment(config)
    assert [s.train.name for s in built.splits] == [
        "digits-classes0-1",
        "digits-classes2-3",
        "digits-classes4-5",
    ]
    for t, split in enumerate(built.splits):
        for task in (split.train, split.test):
            assert {int(e["labels"]) for e in task.examples} == {2 * t, 2 * t + 1}


def test_a_text_file_task_says_what_it_held_out(tmp_path: Path) -> None:
    rows = "".join(f"text {i} is {'good' if i % 2 else 'bad'},{i % 2}\n" for i in range(50))
    (tmp_path / "t.csv").write_text("text,label\n" + rows)
    task = {"dataset": str(tmp_path / "t.csv"), "test_size": 0.3}
    config = config_from_dict(
        {
            "name": "t",
            "model": {"name": "minilm-l6", "kind": "task-heads"},
            "tasks": [task],
        }
    )
    with pytest.warns(UserWarning, match=r"tasks.0 \(t\): held out 15 of 50 rows \(30%"):
        built = build_experiment(config)
    assert len(built.splits[0].train.examples) == 35
