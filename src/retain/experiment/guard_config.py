"""The guard sections of an experiment config: the forgetting ``monitor`` (stop and roll back
past a budget) and the forgetting ``budget`` (tune a penalty's strength to meet it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from retain.experiment.sections import Section
from retain.training.monitor import MonitorConfig

__all__ = ["BudgetSection", "MonitorSection"]

#: The engine's dataclass is the one source of every monitor default.
_MONITOR = MonitorConfig()


class MonitorSection(Section):
    """The forgetting monitor (:class:`retain.training.monitor.MonitorConfig`): watch the suite
    and every earlier task while training, stop (and roll back) past ``max_degradation``."""

    max_degradation: float = Field(default=_MONITOR.max_degradation, ge=0)
    patience: int = Field(default=_MONITOR.patience, ge=1)
    eval_every: int = Field(default=_MONITOR.eval_every, ge=0)
    restore_best: bool = _MONITOR.restore_best


class BudgetSection(Section):
    """A forgetting budget (:class:`retain.training.budget.ForgettingBudget`): the strength of
    every ``ewc`` or ``l2sp`` strategy entry marked ``budget: true`` (in ``strategies`` or a
    sweep variant) is tuned so the suite's worst relative degradation stays near
    ``max_degradation``, evaluated every ``every`` steps. Needs a suite."""

    max_degradation: float = Field(gt=0)
    every: int = Field(default=10, ge=1)
    controller: Literal["multiplicative", "pi"] = "multiplicative"
