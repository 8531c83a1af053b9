"""The ``tracking`` section of an experiment: the trackers a run streams its figures to.

::

    tracking: {report_to: [tensorboard, mlflow], dir: null, project: null}

``report_to`` follows transformers' ``TrainingArguments.report_to``: a list of tracker names, one
name alone, or ``none`` (the default: off). A tracker whose package is missing is refused when the
config is validated, before anything is written, naming what to install. What is streamed, and
where each tracker writes: :mod:`retain.experiment.tracking`.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Literal

from pydantic import Field, field_validator

from retain.experiment.sections import Section

__all__ = ["TRACKERS", "TrackerName", "TrackingSection", "missing_package"]

TrackerName = Literal["tensorboard", "mlflow", "wandb"]

#: Per tracker: the modules it needs, and the package that brings them.
TRACKERS: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard",), "tensorboard"),
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "mlflow"),
    "wandb": (("wandb",), "wandb"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_package(name: str) -> str:
    """Why tracker ``name`` cannot run here, with the fix (``""``: it can).

    MLflow's local store (``sqlite:`` under ``tracking.dir``) needs SQLAlchemy and Alembic, which
    the ``mlflow`` package brings and ``mlflow-skinny`` does not; with ``MLFLOW_TRACKING_URI`` set
    (a tracking server) ``mlflow`` alone is enough.
    """
    modules, package = TRACKERS[name]
    if name == "mlflow" and os.environ.get("MLFLOW_TRACKING_URI"):
        modules = modules[:1]
    absent = [m for m in modules if not _installed(m)]
    if not absent:
        return ""
    if absent[0] == modules[0]:
        return f"{name} is not installed; pip install 'retain[tracking]' (or pip install {package})"
    return (
        f"{name} needs {' and '.join(absent)} for its local store, not installed; "
        f"pip install 'retain[tracking]' (or pip install {' '.join(absent)})"
    )


class TrackingSection(Section):
    """Experiment trackers a run streams to (:mod:`retain.experiment.tracking`).

    Attributes:
        report_to: ``tensorboard``, ``mlflow`` and/or ``wandb`` (``none`` or ``[]``: off).
        dir: the folder the trackers write into: TensorBoard's event files, MLflow's store
            (``mlflow.db``, unless ``MLFLOW_TRACKING_URI`` names another) and W&B's run files.
            None: ``tracking/`` in the run directory (``retain sweep``: in the sweep folder,
            shared by its runs).
        project: the MLflow experiment and the W&B project (None: the experiment's ``name``).
            Runs are named ``<name>/<variant>/seed<k>`` and grouped by ``name``.
    """

    report_to: list[TrackerName] = Field(default_factory=list)
    dir: str | None = Field(default=None, min_length=1)
    project: str | None = Field(default=None, min_length=1)

    @field_validator("report_to", mode="before")
    @classmethod
    def _a_list(cls, value: Any) -> Any:
        """``none``, ``[none]`` or null -> ``[]``; one name -> a list of it."""
        if value is None or value in ("none", ["none"]):
            return []
        return [value] if isinstance(value, str) else value

    @field_validator("report_to")
    @classmethod
    def _once_and_installed(cls, names: list[TrackerName]) -> list[TrackerName]:
        for name in names:
            why = missing_package(name)
            if why:
                raise ValueError(why)
        return list(dict.fromkeys(names))
