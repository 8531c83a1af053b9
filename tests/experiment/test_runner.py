"""``run_experiment``: the run directory, equality with the engine, drift, resume and refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from retain.errors import RetainError
from retain.experiment.build import build_experiment, build_strategies
from retain.experiment.config import ExperimentConfig, config_from_dict
from retain.experiment.runner import RunSpec, run_experiment
from retain.experiment.training_settings import train_config
from retain.training.sequence import fit_sequence


def mlp_config(**change: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "name": "mlp-digits",
        "model": {"name": "mlp", "kind": "mlp", "hidden": [16]},
        "tasks": [
            {"dataset": "digits", "train": 200, "test": 80},
            {"dataset": "digits", "permutation": 1, "train": 200, "test": 80},
        ],
        "training": {"lr": 1e-2, "batch_size": 20, "max_steps": 8},
        "checkpoints": {"every": 4},
        "seeds": [3],
        **change,
    }
    return config_from_dict(data)


def test_a_run_writes_its_directory_and_equals_the_engine(tmp_path: Path) -> None:
    config = mlp_config(strategies=[{"name": "l2sp", "alpha": 0.01}])
    results = run_experiment(RunSpec(config, out=tmp_path / "run", report=False))
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == [
        ".retain-output.json",
        "checkpoints",
        "config.yaml",
        "results.json",
    ]
    saved = json.loads((out / "results.json").read_text())
    assert saved["format"] == "retain.run/1"
    assert saved["variant"] == "l2sp"
    assert saved["seed"] == 3
    assert yaml.safe_load((out / "config.yaml").read_text())["seeds"] == [3]

    built = build_experiment(config, 3)  # the same experiment through the engine directly
    strategies = build_strategies(config.strategies, config, None, None)
    _, direct = fit_sequence(
        built.model, built.splits, strategies, train_config(config, 3), built.score, progress=False
    )
    assert saved["run"]["matrix"] == direct.matrix == results.run.matrix
    assert saved["run"]["baseline"] == direct.baseline
    layers = saved["drift"]["layers"]
    assert layers == ["body.0", "head"]
    assert len(saved["drift"]["after"]) == 2
    assert all(d > 0 for row in saved["drift"]["after"] for d in row)


def test_drift_is_zero_exactly_where_weights_are_frozen(tmp_path: Path) -> None:
    config = mlp_config(strategies=[{"name": "freeze", "params": r"^body\."}])
    results = run_experiment(RunSpec(config, out=tmp_path / "run", report=False))
    by_layer = dict(zip(results.drift.layers, results.drift.after[-1], strict=True))
    assert by_layer["body.0"] == 0.0
    assert by_layer["head"] > 0


def test_rerunning_refuses_or_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = mlp_config()
    first = run_experiment(RunSpec(config, out=out, report=False))
    with pytest.raises(RetainError, match=r"holds a finished run .*--overwrite"):
        run_experiment(RunSpec(config, out=out, report=False))
    again = run_experiment(RunSpec(config, out=out, overwrite=True, report=False))
    assert again.run.matrix == first.run.matrix

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(RetainError, match="not a retain run directory"):
        run_experiment(RunSpec(config, out=foreign, overwrite=True, report=False))
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    config = mlp_config(
        strategies=[{"name": "ewc", "strength": 10.0, "fisher_samples": 32}],
        diagnostics={"interference_every": 3},
    )
    whole = run_experiment(RunSpec(config, out=tmp_path / "whole", report=False))

    class InterruptError(Exception):
        pass

    def stop_after_first_task(line: str) -> None:
        if line.startswith("  task 1/2"):
            raise InterruptError

    out = tmp_path / "cut"
    with pytest.raises(InterruptError):
        run_experiment(RunSpec(config, out=out, report=False, say=stop_after_first_task))
    assert not (out / "results.json").exists()
    assert (out / "progress.json").exists()

    other = mlp_config(training={"lr": 5e-3, "batch_size": 20, "max_steps": 8})
    with pytest.raises(RetainError, match="unfinished run of a different config"):
        run_experiment(RunSpec(other, out=out, report=False))

    lines: list[str] = []
    resumed = run_experiment(RunSpec(config, out=out, report=False, say=lines.append))
    assert lines[0].startswith("resuming mlp-digits [ewc] seed 3")
    assert resumed.run.resumed
    assert resumed.run.matrix == whole.run.matrix
    assert resumed.drift == whole.drift
    assert resumed.interference == whole.interference
    assert [r.global_step for r in whole.interference.records] == [11, 14]
    assert not (out / "progress.json").exists()


def test_a_bad_input_found_while_building_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    bad = mlp_config(tasks=[{"dataset": "digit", "train": 50, "test": 20}])
    with pytest.raises(RetainError, match="did you mean 'digits'"):
        run_experiment(RunSpec(bad, out=out, report=False))
    assert not out.exists()
    unknown = mlp_config(strategies=[{"name": "ewc", "fisher_sample": 3}])
    with pytest.raises(RetainError, match="did you mean 'fisher_samples'"):
        run_experiment(RunSpec(unknown, out=out, report=False))
    assert not out.exists()
    run_experiment(RunSpec(mlp_config(), out=out, report=False))  # the fixed config runs


def test_max_steps_alone_runs_as_many_epochs_as_it_takes(tmp_path: Path) -> None:
    config = mlp_config(training={"lr": 1e-2, "batch_size": 50, "max_steps": 9})
    results = run_experiment(RunSpec(config, out=tmp_path / "run", report=False))
    assert [log.steps for log in results.run.logs] == [9, 9]  # 4 steps an epoch
    assert results.run.logs[0].epochs_done == 3


def heads_data(folder: Path, diagnostics: dict[str, Any]) -> dict[str, Any]:
    """A short TREC -> SMS task-heads run of the tiny BERT at ``folder``, seed 0."""
    return {
        "name": "heads",
        "model": {"name": str(folder), "kind": "task-heads"},
        "tasks": [
            {"dataset": "trec", "train": 32, "test": 16, "max_length": 16},
            {"dataset": "sms_spam", "train": 32, "test": 16, "max_length": 16},
        ],
        "training": {"lr": 1e-3, "batch_size": 8, "max_steps": 4},
        "diagnostics": diagnostics,
        "checkpoints": {"enabled": False},
        "seeds": [0],
    }


def test_interference_during_training_and_shift_of_a_task_heads_run(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    diagnostics = {"interference_every": 2, "interference_samples": 8, "shift": True}
    config = config_from_dict(heads_data(tiny_bert_dir, diagnostics))
    results = run_experiment(RunSpec(config, out=tmp_path / "run"))
    interference = results.interference
    assert interference.prior == "earlier tasks"
    records = interference.records
    assert [(r.task, r.step, r.global_step) for r in records] == [
        ("sms_spam", 2, 6),
        ("sms_spam", 4, 8),
    ]
    assert all(-1 <= r.cosine <= 1 for r in records)
    assert "encoder.encoder.layer.0" in records[0].layers
    assert interference.summary.measured == 2
    shift = results.shift
    assert shift.data == "trec"
    assert [layer.name for layer in shift.representation] == [
        "embeddings",
        "block 0",
        "block 1",
    ]
    assert all(layer.cka < 1 for layer in shift.representation[1:])
    assert shift.output is None
    assert "causal language model" in shift.skipped["output"]


def test_an_mlp_run_skips_the_representation_shift_with_a_reason(tmp_path: Path) -> None:
    config = mlp_config(diagnostics={"shift": True}, checkpoints={"enabled": False})
    results = run_experiment(RunSpec(config, out=tmp_path / "run", report=False))
    assert results.shift.representation is None
    assert "not token sequences" in results.shift.skipped["representation"]
    assert results.interference is None


def test_shift_from_the_first_task_compares_with_the_model_right_after_it(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    import copy

    from retain.diagnostics.similarity import representation_shift

    data = heads_data(
        tiny_bert_dir, {"shift": True, "shift_from": "first_task", "shift_samples": 16}
    )
    config = config_from_dict(data)
    results = run_experiment(RunSpec(config, out=tmp_path / "run", report=False))
    assert results.shift.reference == "after trec"

    built = build_experiment(config, 0)  # the same run through the engine, with a snapshot
    snapshots: list[Any] = []
    model, _ = fit_sequence(
        built.model,
        built.splits,
        [],
        train_config(config, 0),
        built.score,
        progress=False,
        after_task=lambda t, m: snapshots.append(copy.deepcopy(m)) if t == 0 else None,
    )
    batches = [
        {k: v for k, v in b.items() if k in ("input_ids", "attention_mask")}
        for b in built.splits[0].test.batches(8, limit=16)
    ]
    expected = representation_shift(snapshots[0], model, batches)
    got = [layer.cka for layer in results.shift.representation]
    assert got == pytest.approx([layer.cka for layer in expected], abs=1e-9)
    start = run_experiment(
        RunSpec(
            config_from_dict({**data, "diagnostics": {"shift": True, "shift_samples": 16}}),
            out=tmp_path / "from-start",
            report=False,
        )
    )
    assert start.shift.reference == "start"
    assert start.shift.representation[2].cka < got[2]  # includes what trec changed


def test_the_terminal_says_when_the_monitor_put_earlier_weights_back() -> None:
    from retain.experiment.runner import _restored
    from retain.records.run import MonitorResult

    def result(best: int | None, restored: bool = True) -> MonitorResult:
        return MonitorResult(
            stopped=True, reason="budget", best_step=best, restored=restored, history=[]
        )

    assert "starting weights were restored" in _restored("trec", 10, result(0))
    assert "raise monitor.max_degradation" in _restored("trec", 10, result(0))
    assert "weights of step 20 were restored" in _restored("trec", 30, result(20))
    assert _restored("trec", 30, result(30)) == ""  # the weights it ended with: nothing to say
    assert _restored("trec", 30, result(0, restored=False)) == ""
    assert _restored("trec", 30, None) == ""
