"""Fixtures of the report tests: the results.json of a real tiny run, and its variations.

The run is a real :func:`fit_sequence` of an MLP over three permuted-digits tasks (a few steps
each) with a capability suite and a forgetting monitor, so the monitor histories, the suite table
and the stop reasons are genuine; drift, layer learning rates, unfreezing and budget entries are
added by hand (the runner records them, :mod:`retain.experiment.runner`). One task name contains
``<script>`` to check escaping.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from retain.assets.mlp import MLP
from retain.data.permuted import TaskSplit, permuted_image_tasks
from retain.evaluation.suite import EvalSuite
from retain.evaluation.task_probe import TaskAccuracyProbe
from retain.experiment.run_dir import to_jsonable, write_json
from retain.records.run import DriftRecord, RunRecord
from retain.report.write import write_comparison_report, write_run_report
from retain.training.loop import TrainConfig
from retain.training.monitor import MonitorConfig
from retain.training.sequence import fit_sequence

NASTY = 'perm1<script>alert("x")</script>'
MONITOR = MonitorConfig(max_degradation=0.2, eval_every=3, patience=2, restore_best=False)


def _renamed(split: TaskSplit, name: str) -> TaskSplit:
    """``split`` named ``name``, with 150 test examples (fast scoring)."""
    test = replace(split.test, name=name, examples=split.test.examples[:150])
    return TaskSplit(replace(split.train, name=name), test)


def tiny_results(seed: int = 0, variant: str = "naive") -> RunRecord:
    """The record of a real 3-task run (``results.json``, ``retain.run/1``), hand-made extras."""
    splits = permuted_image_tasks("digits", 4, seed=0)
    capability, tasks = splits[0].test, splits[1:]
    tasks = [_renamed(s, n) for s, n in zip(tasks, ["perm0", NASTY, "perm2"], strict=True)]
    probe = TaskAccuracyProbe(
        "digits/original", capability.with_examples(capability.examples[:150])
    )
    suite = EvalSuite("digits", [probe])
    torch.manual_seed(seed)
    model = MLP(64, [32], 10)
    config = TrainConfig(lr=2e-2, batch_size=32, max_steps=12, seed=seed)
    _, result = fit_sequence(
        model, tasks, None, config, suite=suite, monitor=MONITOR, progress=False
    )
    steps = [log.steps for log in result.logs]
    layers = ["body.0.weight", "body.0.bias", "head.weight", "head.bias"]
    results = {
        "format": "retain.run/1",
        "name": "tiny <b>digits</b>",
        "variant": variant,
        "seed": seed,
        "model": "mlp-64-32-10",
        "score": {"name": "accuracy", "higher_is_better": True},
        "run": result.to_json(),
        "monitor": {"max_degradation": 0.2, "eval_every": 3, "patience": 2},
        "budget": {
            "max_degradation": 0.1,
            "history": [
                [{"step": float(k), "degradation": 0.05 * k, "strength": 2.0**k} for k in (1, n)]
                for n in steps
            ],
        },
        "drift": {
            "layers": layers,
            "after": [[0.1 * (t + 1) * (k + 1) for k in range(len(layers))] for t in range(3)],
        },
        "layer_lrs": [{"group": name, "lr": 1e-3 * 0.5**k} for k, name in enumerate(layers)],
        "unfreezing": [[[0, 1], [n // 2, 2], [n, 3]] for n in steps],
        "seconds": 1.5,
    }
    # What results.json holds: strict JSON, NaN as null.
    data: dict[str, Any] = json.loads(json.dumps(to_jsonable(results), allow_nan=False))
    return RunRecord.from_json(data)


@pytest.fixture(scope="session")
def real_results() -> RunRecord:
    """The tiny run's results (shared: deep-copy before changing)."""
    return tiny_results()


def _variation(results: RunRecord, variant: str, seed: int, shift: float) -> RunRecord:
    """A copy of ``results`` as another variant/seed, without the strategy extras, trading
    plasticity for retention by ``shift``: scores below the diagonal move by ``+shift``, the
    diagonal by ``-shift / 2`` (clipped to [0, 1]) and the suite's last degradations by ``-shift``.
    """
    copied = results.model_copy(deep=True)
    copied = copied.model_copy(
        update={
            "variant": variant,
            "seed": seed,
            "budget": None,
            "layer_lrs": None,
            "unfreezing": None,
            "drift": DriftRecord(layers=[], after=[]),
        }
    )
    for t, row in enumerate(copied.run.matrix):
        for i in range(t + 1):
            row[i] = min(1.0, max(0.0, row[i] + (shift if i < t else -shift / 2)))
    assert copied.run.suite is not None
    last = copied.run.suite.relative_degradation[-1]
    for name, value in last.items():
        last[name] = value - shift
    return copied


Variation = Callable[[RunRecord, str, int, float], RunRecord]


@pytest.fixture(scope="session")
def variation() -> Variation:
    """``variation(results, variant, seed, shift)``: see :func:`_variation`."""
    return _variation


@dataclass(frozen=True)
class Comparison:
    """A written comparison of two variants x two seeds of the tiny run."""

    runs: list[Path]  # run directories; only the first has its own report.html
    results: list[RunRecord]
    out: Path
    report: Path


@pytest.fixture(scope="session")
def comparison(tmp_path_factory: pytest.TempPathFactory, real_results: RunRecord) -> Comparison:
    """``naive`` (more forgetting) and ``replay`` (less), seeds 0 and 1, written under a sweep
    folder, and their comparison report in a sibling folder."""
    root = tmp_path_factory.mktemp("sweep")
    plan = [("naive", 0, -0.10), ("naive", 1, -0.05), ("replay", 0, 0.10), ("replay", 1, 0.15)]
    runs, results = [], []
    for variant, seed, shift in plan:
        folder = root / "runs" / f"{variant}-seed{seed}"
        folder.mkdir(parents=True)
        data = _variation(real_results, variant, seed, shift)
        write_json(folder / "results.json", data.to_json())
        runs.append(folder)
        results.append(data)
    write_run_report(runs[0])
    out = root / "comparison"
    return Comparison(runs, results, out, write_comparison_report(runs, out))
