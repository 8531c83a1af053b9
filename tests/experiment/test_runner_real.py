"""Shipped configs run for real (shortened with overrides): the causal-LM path with a
perplexity suite and a forgetting budget, and the permuted-MNIST MLP with a monitor."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from retain.experiment.config import load_config
from retain.experiment.runner import RunSpec, run_experiment


@pytest.mark.slow
def test_smollm2_domain_runs_with_its_budget(tmp_path: Path) -> None:
    config = load_config(
        "smollm2_domain",
        [
            "tasks.0.train=16",
            "tasks.0.test=8",
            "tasks.0.max_length=32",
            "suite.probes.0.n=4",
            "suite.probes.0.max_length=64",
            "training.max_steps=4",
            "training.batch_size=4",
            "budget.every=2",
            "checkpoints.every=2",
            "diagnostics={interference_every: 2, interference_samples: 4, shift: true,"
            " shift_samples: 4}",
        ],
    )
    results = run_experiment(RunSpec(config, out=tmp_path / "run"))
    run = results.run
    assert results.interference.prior == "general_text"
    assert [r.global_step for r in results.interference.records] == [2, 4]
    assert "model.layers.29" in results.interference.records[0].layers
    assert len(results.shift.representation) == 31  # embeddings + 30 blocks
    assert results.shift.data == "general_text"  # what a causal LM forgets
    # The tracker is described by its settings, not printed with its reference data.
    assert "interference(every=2, samples=4, prior='general_text')" in results.run.strategies
    assert len(results.run.strategies) < 500
    assert results.shift.output.kl_mean > 0
    assert results.score.name.startswith("negative loss")
    assert run.matrix[0][0] > run.baseline[0]  # the domain loss fell
    assert set(run.suite.baseline) == {"general_text"}
    assert not math.isnan(run.suite.relative_degradation[0]["general_text"])
    history = results.budget.history[0]
    assert [h.step for h in history] == [2.0, 4.0]
    assert "forgetting_budget" in run.strategies
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["budget"]["max_degradation"] == 0.1
    assert (tmp_path / "run" / "plots" / "budget.png").is_file()


@pytest.mark.slow
def test_permuted_mnist_runs_with_a_monitor(tmp_path: Path) -> None:
    config = load_config(
        "permuted_mnist",
        [
            "tasks=[{dataset: mnist, name: mnist, train: 400, test: 200},"
            " {dataset: mnist, permutation: 1, train: 400, test: 200}]",
            "training.epochs=1",
            "strategies.0.fisher_samples=64",
            "monitor={max_degradation: 0.5, eval_every: 3}",
            "checkpoints.enabled=false",
        ],
    )
    results = run_experiment(RunSpec(config, out=tmp_path / "run"))
    run = results.run
    assert run.tasks == ["mnist", "mnist-perm1"]
    assert run.matrix[0][0] > 0.5  # the MLP learns the unpermuted digits
    assert run.logs[1].monitor.history[0].step == 0
    assert results.drift.layers == ["body.0", "head"]
