"""Experiment trackers: a real run streams to TensorBoard, MLflow and W&B (offline), and what each
stores, read back with the tracker's own reader, equals ``results.json``."""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from retain.cli import main
from retain.errors import RetainError
from retain.experiment.config import ExperimentConfig, config_from_dict
from retain.experiment.runner import RunSpec, run_experiment
from retain.experiment.sweep import SweepSpec, run_sweep
from retain.experiment.tracking import RunTracking, flat_params, run_tracking
from retain.records.run import TaskLog
from retain.training.observer import StepEvent, TaskEndEvent

Series = dict[str, list[tuple[int, float]]]


def tracked_config(report_to: list[str], **change: Any) -> ExperimentConfig:
    """Two MLP tasks on digits (seconds), monitored, streamed to ``report_to``."""
    data: dict[str, Any] = {
        "name": "mlp-digits",
        "model": {"name": "mlp", "kind": "mlp", "hidden": [16]},
        "tasks": [
            {"dataset": "digits", "train": 120, "test": 60},
            {"dataset": "digits", "permutation": 1, "train": 120, "test": 60},
        ],
        "training": {"lr": 1e-2, "batch_size": 20, "max_steps": 7},
        "monitor": {"max_degradation": 0.9, "eval_every": 3},
        "checkpoints": {"enabled": False},
        "seeds": [3],
        "tracking": {"report_to": report_to},
        **change,
    }
    return config_from_dict(data)


def expected_series(results: dict[str, Any]) -> Series:
    """Every figure ``results.json`` implies, as ``(global step, value)`` pairs."""
    run = results["run"]
    series: Series = {}
    start = 0
    for t, log in enumerate(run["logs"]):
        for k, (loss, lr) in enumerate(zip(log["losses"], log["lrs"], strict=True)):
            series.setdefault("train/loss", []).append((start + k + 1, loss))
            series.setdefault("train/lr", []).append((start + k + 1, lr))
        for entry in (log["monitor"] or {"history": []})["history"]:
            for name, value in entry["degradation"].items():
                if value is not None:
                    key = f"monitor/{name}/degradation"
                    series.setdefault(key, []).append((start + entry["step"], value))
        start += log["steps"]
        for name, score in zip(run["tasks"], run["matrix"][t], strict=True):
            series.setdefault(f"score/{name}", []).append((start, score))
    for name, value in run["metrics"].items():
        if value is not None:  # undefined (NaN) is left out
            series[f"metrics/{name}"] = [(start, value)]
    return series


def same(got: list[tuple[int, float]], want: list[tuple[int, float]], rel: float = 0.0) -> bool:
    """Equal steps and values (``rel``: TensorBoard keeps float32)."""
    return [s for s, _ in got] == [s for s, _ in want] and all(
        a == pytest.approx(b, rel=rel, abs=0) for (_, a), (_, b) in zip(got, want, strict=True)
    )


def tensorboard_series(folder: Path) -> Series:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def mlflow_runs(db: Path, experiment: str) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    return list(client.search_runs([found.experiment_id]))


def mlflow_series(db: Path, run_id: str, keys: list[str]) -> Series:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in keys
    }


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run streamed to TensorBoard and MLflow (the store in its ``tracking/``)."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        run_experiment(RunSpec(tracked_config(["tensorboard", "mlflow"]), out=out, report=False))
    return out


def test_tensorboard_holds_every_figure_of_results_json(tracked_run: Path) -> None:
    results = json.loads((tracked_run / "results.json").read_text())
    want = expected_series(results)
    assert any(k.startswith("monitor/task/digits/") for k in want)  # the monitor was streamed
    got = tensorboard_series(tracked_run / "tracking" / "mlp-digits" / "naive" / "seed3")
    for key, series in want.items():
        assert same(got[key], series, rel=1e-6), key
    assert len(got["train/loss"]) == 14  # two tasks of 7 steps, global steps 1 .. 14


def test_mlflow_holds_every_figure_and_the_config(tracked_run: Path) -> None:
    results = json.loads((tracked_run / "results.json").read_text())
    want = expected_series(results)
    db = tracked_run / "tracking" / "mlflow.db"
    (run,) = mlflow_runs(db, "mlp-digits")
    assert run.info.run_name == "mlp-digits/naive/seed3"
    assert run.info.status == "FINISHED"
    assert run.data.tags["retain.group"] == "mlp-digits"
    assert run.data.params["training.lr"] == "0.01"
    assert run.data.params["tasks.1.permutation"] == "1"
    assert run.data.params["tracking.report_to"] == '["tensorboard", "mlflow"]'
    got = mlflow_series(db, run.info.run_id, list(want))
    for key, series in want.items():
        assert same(got[key], series), key  # MLflow keeps float64: exact


def wandb_records(run_file: Path) -> Iterator[Any]:
    """The records of a W&B run file (``run-<id>.wandb``): a 7-byte header (``:W&B``, magic,
    version), then LevelDB-log chunks in 32 KiB blocks, each ``crc32 (4) | length (2) | kind
    (1)`` (1 full, 2 first, 3 middle, 4 last), holding protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    raw, position, pending = run_file.read_bytes(), 7, b""
    assert raw[:4] == b":W&B"
    while position + 7 <= len(raw):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", raw[position : position + 7])
        if kind == 0:
            break
        pending += raw[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_holds_the_losses_at_their_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CONFIG_DIR", "CACHE_DIR", "DATA_DIR"):
        monkeypatch.setenv(f"WANDB_{name}", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    config = tracked_config(["wandb"], tracking={"report_to": "wandb", "project": "forgetting"})
    run_experiment(RunSpec(config, out=out, report=False))
    results = json.loads((out / "results.json").read_text())
    (run_file,) = (out / "tracking" / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(wandb_records(run_file))
    (started,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (started.project, started.run_group) == ("forgetting", "mlp-digits")
    assert started.display_name == "mlp-digits/naive/seed3"
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in record.history.item
                }
            )
    got: Series = {}
    for row in rows:
        for key, value in row.items():
            if not key.startswith("_"):
                got.setdefault(key, []).append((row["_step"], value))
    for key, series in expected_series(results).items():
        assert same(got[key], series), key


def test_a_sweep_gives_each_run_its_own_tracker_run_in_one_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = tracked_config(
        ["tensorboard", "mlflow"],
        sweep={"variants": {"naive": [], "l2sp": [{"name": "l2sp", "alpha": 0.01}]}},
        monitor=None,
    )
    run_sweep(SweepSpec(config, seeds=[0], out=tmp_path / "sw", say=lambda _line: None))
    store = tmp_path / "sw" / "tracking"
    assert sorted(p.name for p in (store / "mlp-digits").iterdir()) == ["l2sp", "naive"]
    runs = {r.info.run_name: r for r in mlflow_runs(store / "mlflow.db", "mlp-digits")}
    assert sorted(runs) == ["mlp-digits/l2sp/seed0", "mlp-digits/naive/seed0"]
    for variant in ("naive", "l2sp"):
        results = json.loads((tmp_path / "sw" / variant / "seed-0" / "results.json").read_text())
        want = expected_series(results)["train/loss"]
        got = tensorboard_series(store / "mlp-digits" / variant / "seed0")["train/loss"]
        assert same(got, want, rel=1e-6)
        run_id = runs[f"mlp-digits/{variant}/seed0"].info.run_id
        assert same(mlflow_series(store / "mlflow.db", run_id, ["train/loss"])["train/loss"], want)
        assert runs[f"mlp-digits/{variant}/seed0"].data.tags["retain.variant"] == variant
    assert not (tmp_path / "sw" / "naive" / "seed-0" / "tracking").exists()


class Recorder:
    """A backend that keeps what it is sent."""

    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.final: dict[str, float] = {}
        self.closed: bool | None = None

    def log(self, figures: Any, step: int) -> None:
        self.logged.append((step, dict(figures)))

    def finish(self, metrics: Any, step: int) -> None:
        self.final = dict(metrics)

    def close(self, ok: bool) -> None:
        self.closed = ok


class Budget:
    """What the tracking reads of a forgetting budget."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []


def test_monitor_and_budget_figures_arrive_at_their_steps_in_order() -> None:
    recorder, budget = Recorder(), Budget()
    budget.history = [{"step": 5.0, "degradation": 0.3, "strength": 10.0}]  # an earlier task's
    tracking = RunTracking([recorder], budget)  # type: ignore[arg-type]
    start = {
        "step": 0,
        "scores": {"qa": 0.5},
        "degradation": {"qa": 0.0},
        "worst_degradation": 0.0,
        "task_score": None,
    }
    check = {**start, "step": 2, "degradation": {"qa": 0.1}, "worst_degradation": 0.1}
    log = TaskLog(task="b", losses=[1.0, 0.9], lrs=[0.1, 0.1])
    budget.history.append({"step": 2.0, "degradation": 0.1, "strength": 20.0})
    tracking.on_step(StepEvent(1, 2, 12, log, [start, check]))
    final = {**check, "step": 2, "worst_degradation": 0.2, "degradation": {"qa": None}}
    tracking.on_task_end(TaskEndEvent(1, 12, log, {"a": 0.7, "b": 0.8}, [start, check, final]))
    assert recorder.logged == [
        (
            10,
            {
                "monitor/qa/score": 0.5,
                "monitor/qa/degradation": 0.0,
                "monitor/worst_degradation": 0.0,
            },
        ),  # the task's start: global step 10
        (
            12,
            {
                "monitor/qa/score": 0.5,
                "monitor/qa/degradation": 0.1,
                "monitor/worst_degradation": 0.1,
            },
        ),
        (12, {"budget/strength": 20.0, "budget/worst_degradation": 0.1}),
        (12, {"train/loss": 0.9, "train/lr": 0.1}),
        (12, {"monitor/qa/score": 0.5, "monitor/worst_degradation": 0.2}),  # None left out
        (12, {"score/a": 0.7, "score/b": 0.8}),
    ]
    assert [s for s, _ in recorder.logged] == sorted(s for s, _ in recorder.logged)


def test_other_processes_and_a_run_without_trackers_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with run_tracking(tracked_config([]), tmp_path / "off") as tracking:
        assert tracking.backends == []
    monkeypatch.setattr("retain.experiment.tracking.is_main_process", lambda: False)
    with run_tracking(tracked_config(["tensorboard"]), tmp_path / "rank1") as tracking:
        assert tracking.backends == []
    assert not (tmp_path / "off").exists()
    assert not (tmp_path / "rank1").exists()


def test_a_failed_run_closes_its_trackers_as_failed(tmp_path: Path) -> None:
    recorder = Recorder()
    config = tracked_config([])

    def fail() -> None:
        with run_tracking(config, tmp_path) as tracking:
            tracking.backends.append(recorder)
            raise RetainError("the run failed")

    with pytest.raises(RetainError, match="the run failed"):
        fail()
    assert recorder.closed is False


def test_report_to_takes_none_one_name_or_a_list() -> None:
    def section(value: Any) -> list[str]:
        return list(tracked_config([], tracking={"report_to": value}).tracking.report_to)

    assert section("none") == section(None) == section([]) == section(["none"]) == []
    assert section("tensorboard") == ["tensorboard"]
    assert section(["mlflow", "tensorboard", "mlflow"]) == ["mlflow", "tensorboard"]
    assert tracked_config([]).model_dump()["tracking"] == {
        "report_to": [],
        "dir": None,
        "project": None,
    }
    with pytest.raises(
        RetainError,
        match=r"tracking.report_to.0: unknown value 'tensorbord'; did you mean 'tensorboard'",
    ):
        tracked_config(["tensorbord"])


def test_flat_params_name_every_setting() -> None:
    flat = flat_params(tracked_config(["tensorboard"]).model_dump(mode="json"))
    assert flat["model.hidden"] == "[16]"
    assert flat["tasks.0.dataset"] == "digits"
    assert flat["monitor.eval_every"] == 3
    assert flat["out"] == "null"


def test_a_tracker_that_is_not_installed_fails_in_one_line_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` fails: not installed
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(
        RetainError,
        match=r"tracking.report_to: mlflow is not installed; "
        r"pip install 'retain\[tracking\]' \(or pip install mlflow\)",
    ):
        tracked_config(["mlflow"])
    config = tmp_path / "cfg.yaml"
    data = tracked_config([]).model_dump(mode="json")
    config.write_text(yaml.safe_dump({**data, "tracking": {"report_to": ["mlflow"]}}))
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("retain: error:") == 1
    assert "mlflow is not installed" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]


def test_mlflow_without_sqlalchemy_needs_it_only_for_its_local_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        "retain.experiment.tracking_config._installed", lambda module: module != "sqlalchemy"
    )
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RetainError, match="mlflow needs sqlalchemy for its local store"):
        tracked_config(["mlflow"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracked_config(["mlflow"]).tracking.report_to == ["mlflow"]


def test_an_unfinished_run_resumes_under_other_tracking_settings(tmp_path: Path) -> None:
    from retain.experiment.config import config_to_yaml
    from retain.experiment.run_state import run_state
    from retain.output_dirs import write_marker

    out = tmp_path / "run"
    out.mkdir()
    write_marker(out, "run")
    (out / "config.yaml").write_text(config_to_yaml(tracked_config([])))
    assert run_state(out, config_to_yaml(tracked_config(["tensorboard"]))) == "resume"
    other = tracked_config([], training={"lr": 2e-2, "batch_size": 20, "max_steps": 7})
    assert run_state(out, config_to_yaml(other)) == "different"
    old = yaml.safe_load((out / "config.yaml").read_text())
    del old["tracking"]  # written before the tracking section existed
    (out / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    assert run_state(out, config_to_yaml(tracked_config(["mlflow"]))) == "resume"


def test_finish_leaves_out_undefined_metrics(tmp_path: Path) -> None:
    """One task: BWT, FWT and forgetting are undefined (NaN in memory, null on disk)."""
    config = tracked_config(
        ["tensorboard"], tasks=[{"dataset": "digits", "train": 60, "test": 30}], monitor=None
    )
    record = run_experiment(RunSpec(config, out=tmp_path / "run", report=False))
    assert math.isnan(record.run.metrics.backward_transfer)
    found = [
        tensorboard_series(folder)
        for folder in (tmp_path / "run" / "tracking").rglob("*")
        if folder.is_dir() and any(folder.glob("events.out.tfevents.*"))
    ]
    tags = set().union(*found)
    assert "metrics/average_accuracy" in tags
    assert "metrics/backward_transfer" not in tags
