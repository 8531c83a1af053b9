"""The experiment trackers a run can stream to: TensorBoard, MLflow and Weights & Biases.

Each backend is one tracker run with three calls: ``log(figures, step)`` (numbers at a global
optimizer step, called with non-decreasing steps), ``finish(metrics, step)`` (the final metrics,
once, when the run succeeded) and ``close(ok)``. :func:`open_backend` starts one from a
:class:`TrackerRun`; each uses its library directly, with no global state left behind, so the
runs of a sweep in one process stay apart:

* ``tensorboard``: event files in ``<dir>/<run name>`` (``torch.utils.tensorboard``); the config
  as text at step 0, and at the end its settings with the final metrics in the HPARAMS tab.
* ``mlflow``: a run of the experiment ``<project>`` in the store ``MLFLOW_TRACKING_URI`` or, when
  it is unset, ``sqlite:///<dir>/mlflow.db`` (an :class:`mlflow.tracking.MlflowClient`); the
  settings as params, tagged with the experiment's name, variant and seed. Keys are kept to the
  characters MLflow accepts (others become ``_``).
* ``wandb``: a run of project ``<project>``, group ``<name>``, its files under ``<dir>/wandb``;
  the config as the run's config, the final metrics in its summary. ``WANDB_MODE=offline``
  keeps it on disk (``wandb sync`` uploads it later).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from retain.errors import RetainError

__all__ = ["Backend", "TrackerRun", "open_backend"]

#: A hyper-parameter value every tracker accepts.
Param = str | int | float | bool


@dataclass(frozen=True)
class TrackerRun:
    """Who a tracker run is and where it goes.

    Attributes:
        directory: the folder local trackers write into.
        project: the MLflow experiment and W&B project.
        group: the runs' group (the experiment's name): W&B's group, an MLflow tag.
        name: the run's name, ``<name>/<variant>/seed<k>``.
        folder: the run's folder under ``directory`` (TensorBoard), its name made path-safe.
        params: the run's settings as flat ``dotted.key: value`` pairs.
        config: the same settings nested (W&B's run config).
        config_yaml: the same settings as YAML (TensorBoard's ``config`` text).
        tags: ``variant`` and ``seed``.
    """

    directory: Path
    project: str
    group: str
    name: str
    folder: str
    params: Mapping[str, Param] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    config_yaml: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


class Backend(Protocol):
    """One tracker run."""

    def log(self, figures: Mapping[str, float], step: int) -> None:
        """Record ``figures`` at global optimizer ``step``."""

    def finish(self, metrics: Mapping[str, float], step: int) -> None:
        """Record the run's final ``metrics`` at ``step`` (its last global step)."""

    def close(self, ok: bool) -> None:
        """End the run: finished when ``ok``, else failed."""


class TensorBoardBackend:
    """Event files in ``<directory>/<folder>`` (:mod:`torch.utils.tensorboard`)."""

    def __init__(self, run: TrackerRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run = run
        self.writer = SummaryWriter(log_dir=str(run.directory / run.folder))
        indented = "".join(f"    {line}\n" for line in run.config_yaml.splitlines())
        self.writer.add_text("config", indented, 0)  # Markdown: indented = verbatim

    def log(self, figures: Mapping[str, float], step: int) -> None:
        for tag, value in figures.items():
            self.writer.add_scalar(tag, value, step)

    def finish(self, metrics: Mapping[str, float], step: int) -> None:
        # run_name ".": the HPARAMS entry and the metrics go to this run's folder (a second
        # events file there), not to a new timestamped run
        params, final = dict(self.run.params), dict(metrics)
        self.writer.add_hparams(params, final, run_name=".", global_step=step)

    def close(self, ok: bool) -> None:
        self.writer.close()


_MLFLOW_KEY = re.compile(r"[^\w\-./ :]")


def _mlflow_key(key: str) -> str:
    return _MLFLOW_KEY.sub("_", key)


class MLflowBackend:
    """A run in an MLflow store, through :class:`mlflow.tracking.MlflowClient`."""

    def __init__(self, run: TrackerRun) -> None:
        from mlflow.entities import Param as MlflowParam
        from mlflow.tracking import MlflowClient

        local = not os.environ.get("MLFLOW_TRACKING_URI")
        uri = f"sqlite:///{(run.directory / 'mlflow.db').resolve()}" if local else None
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(run.project)
        if found is not None:
            experiment = found.experiment_id
        else:
            artifacts = (run.directory / "mlartifacts").resolve().as_uri() if local else None
            experiment = self.client.create_experiment(run.project, artifact_location=artifacts)
        tags = {"retain.group": run.group, **{f"retain.{k}": v for k, v in run.tags.items()}}
        self.run_id = self.client.create_run(experiment, run_name=run.name, tags=tags).info.run_id
        params = [MlflowParam(_mlflow_key(k), str(v)) for k, v in run.params.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log(self, figures: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), float(v), stamp, step) for k, v in figures.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, metrics: Mapping[str, float], step: int) -> None:
        self.log(metrics, step)

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


class WandbBackend:
    """A Weights & Biases run (``WANDB_MODE=offline``: on disk only)."""

    def __init__(self, run: TrackerRun) -> None:
        import wandb

        run.directory.mkdir(parents=True, exist_ok=True)
        try:
            self.run = wandb.init(
                project=run.project,
                group=run.group,
                name=run.name,
                dir=str(run.directory),
                config=dict(run.config),
                tags=[f"{k}:{v}"[:64] for k, v in run.tags.items()],  # W&B's longest tag
            )
        except Exception as error:  # W&B raises its own error types, e.g. when not logged in
            text = str(error).strip()
            first = text.splitlines()[0] if text else type(error).__name__
            raise RetainError(
                f"tracking: wandb could not start a run ({first}); run `wandb login`, or set "
                "WANDB_MODE=offline to keep the run on disk"
            ) from None

    def log(self, figures: Mapping[str, float], step: int) -> None:
        self.run.log(dict(figures), step=step)

    def finish(self, metrics: Mapping[str, float], step: int) -> None:
        self.log(metrics, step)  # the summary keeps each figure's last value

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


_BACKENDS: dict[str, type[TensorBoardBackend | MLflowBackend | WandbBackend]] = {
    "tensorboard": TensorBoardBackend,
    "mlflow": MLflowBackend,
    "wandb": WandbBackend,
}


def open_backend(name: str, run: TrackerRun) -> Backend:
    """Start tracker ``name`` (``tensorboard``, ``mlflow`` or ``wandb``) for ``run``."""
    return _BACKENDS[name](run)
