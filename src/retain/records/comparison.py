"""The record of a comparison of runs: ``comparison.json`` (format ``retain.comparison/1``).

Written by ``retain sweep`` and ``retain report``
(:func:`retain.report.write.write_comparison_report`) from run records: one
:class:`ComparisonRow` per variant with the mean and sample standard deviation over its seeds
of every :class:`RunSummary` figure.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from retain.records.base import Num, Part, Record
from retain.records.parts import Score

__all__ = ["ComparedRun", "ComparisonRecord", "ComparisonRow", "MeanSd", "RunSummary"]


class RunSummary(Part):
    """The summary figures of one run (``NaN`` in memory, ``null`` on disk, where undefined),
    for scores ``R[t][i]`` of ``T`` tasks; transfer and forgetting follow the score's direction,
    so positive forgetting always means got worse."""

    new_task_score: Num
    """Plasticity: ``mean_t R[t][t]``, each task's score right after training it."""
    average_accuracy: Num
    """``mean_i R[T-1][i]``."""
    backward_transfer: Num
    """``mean_{i<T-1} (R[T-1][i] - R[i][i])`` (negative = forgot)."""
    forgetting: Num
    """``mean_{i<T-1} (max_{t<T-1} R[t][i] - R[T-1][i])`` (positive = forgot)."""
    capability_degradation: Num
    """Worst relative degradation of the suite's capabilities after the last task (positive =
    worse, 0.05 = 5 %)."""
    seconds: Num
    """Wall-clock seconds of the whole run."""


class MeanSd(Part):
    """A figure's mean and sample standard deviation over seeds (sd 0 for one run), and the 95 %
    Student-t interval of the mean: ``mean ± t_{0.975, n-1} · sd / sqrt(n)`` over the ``n`` runs
    where the figure is defined (undefined for fewer than 2)."""

    mean: Num
    """Mean over the runs where the figure is defined."""
    sd: Num
    """Sample standard deviation (``n - 1`` in the denominator)."""
    low: Num = float("nan")
    """Lower end of the mean's 95 % interval over seeds (the figure's unit)."""
    high: Num = float("nan")
    """Upper end of the mean's 95 % interval over seeds (the figure's unit)."""


class ComparisonRow(Part):
    """One variant: its runs' figures aggregated over seeds."""

    variant: str
    """The variant's label."""
    strategies: str
    """Its strategies (the first run's ``describe()``)."""
    seeds: list[Annotated[int, Field(ge=0)]]
    """The seeds of its runs."""
    n: int = Field(ge=1)
    """Number of runs."""
    new_task_score: MeanSd
    """See :class:`RunSummary`."""
    average_accuracy: MeanSd
    """See :class:`RunSummary`."""
    backward_transfer: MeanSd
    """See :class:`RunSummary`."""
    forgetting: MeanSd
    """See :class:`RunSummary`."""
    capability_degradation: MeanSd
    """See :class:`RunSummary`."""
    seconds: MeanSd
    """See :class:`RunSummary`."""
    pareto: bool = False
    """On the Pareto front of (new-task score, forgetting cost); never a reference."""
    reference: Literal["joint", "single"] | None = None
    """A reference baseline (:mod:`retain.training.references`), or None for a variant."""
    of_joint: Num = float("nan")
    """Its mean average accuracy over the ``joint`` reference's (1.0 = the joint bound;
    ``NaN`` without a joint row); a fraction of scores, so only for higher-is-better scores."""

    def figure(self, key: str) -> MeanSd:
        """The aggregated figure named ``key`` (one of :data:`SUMMARY_KEYS`)."""
        if key not in SUMMARY_KEYS:
            raise KeyError(key)
        value: MeanSd = getattr(self, key)
        return value


class ComparedRun(Part):
    """One run of the comparison."""

    dir: str
    """Its run directory, relative to the comparison's folder."""
    variant: str
    """Its variant's label."""
    seed: int = Field(ge=0)
    """Its seed."""
    summary: RunSummary
    """Its summary figures."""


class ComparisonRecord(Record):
    """A comparison of variants over seeds: per-variant rows (mean and sample sd of each summary
    figure, Pareto flag) and every run's own summary."""

    FORMAT: ClassVar[str] = "retain.comparison/1"
    WRITER: ClassVar[str] = "retain report"

    format: Literal["retain.comparison/1"] = "retain.comparison/1"
    """The file's format and version."""
    score: Score
    """The score every compared run uses."""
    rows: list[ComparisonRow] = Field(min_length=1)
    """One row per variant, first-seen order."""
    runs: list[ComparedRun] = Field(min_length=1)
    """Every run compared."""


#: The figures of :class:`RunSummary`, in display order.
SUMMARY_KEYS = tuple(RunSummary.model_fields)
