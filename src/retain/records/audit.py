"""The record of an audit: ``results.json`` of ``retain audit`` (format ``retain.audit/1``).

:class:`AuditRecord` is what :func:`retain.experiment.audit.run_audit` returns and writes, and what
the audit report (:mod:`retain.report.audit_report`) renders. A base (starting) and a tuned model
are scored on one capability suite; each :class:`Capability` holds both scores and their change,
signed so that a positive ``degradation`` means worse whatever the score's direction.

Files written before the ``format`` key existed carry only ``"kind": "audit"``; they read as
``retain.audit/1`` (:func:`retain.schema.record_format`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PlainSerializer

from retain.atomic_files import to_jsonable
from retain.records.base import Num, Part, Record
from retain.records.parts import Interval, ModelInfo

__all__ = ["AuditRecord", "Capability", "Details", "Interval", "SuiteInfo", "Verdict"]

#: A probe's free-form details (counts, secondary metrics): a JSON object, written through
#: :func:`retain.atomic_files.to_jsonable` (``NaN`` as ``null``, numpy scalars as numbers).
Details = Annotated[
    dict[str, Any],
    PlainSerializer(to_jsonable, return_type=dict[str, Any], when_used="json"),
]


class SuiteInfo(Part):
    """The capability suite both models were scored on."""

    name: str
    """The suite's registry name, e.g. ``general`` or ``encoder``."""
    description: str = ""
    """What the suite measures, in one line."""
    size: Literal["quick", "full"]
    """``full`` probe sets, or ``quick`` (smaller ones, for smoke tests)."""


class Capability(Part):
    """One capability scored on both models; ``degradation`` is signed so that positive = worse.

    Scores are in the metric's own unit (accuracy as a fraction, perplexity in tokens, ...);
    relative values are fractions of ``|before|`` (0.1 = 10 %), undefined when ``before`` is 0.
    """

    name: str
    """The probe's name, e.g. ``general_text``."""
    metric: str
    """The score's name, e.g. ``perplexity`` or ``accuracy``."""
    higher_is_better: bool
    """True when a larger score is better (accuracy), False otherwise (perplexity)."""
    before: Num
    """The base model's score (metric unit)."""
    after: Num
    """The tuned model's score (metric unit)."""
    change: Num
    """``after - before`` (metric unit), whatever the direction."""
    relative_change: Num
    """``change / |before|`` (fraction); undefined when ``before`` is 0."""
    degradation: Num
    """How much worse (metric unit): ``before - after`` if higher is better, else
    ``after - before``; positive = worse, negative = improved."""
    relative_degradation: Num
    """``degradation / |before|`` (fraction, 0.1 = 10 % worse); undefined when ``before`` is
    0."""
    worsened: bool
    """The relative degradation exceeds the audit's ``tolerance`` (when ``before`` is 0: any
    degradation above 0)."""
    verdict: Literal["WORSE", "WITHIN", "UNCLEAR"] | None = None
    """WORSE when the interval lies beyond the tolerance, WITHIN when inside, UNCLEAR
    otherwise; without an interval, from the point estimate (files before intervals: None)."""
    interval: Interval | None = None
    """The relative degradation's 95 % interval and paired test (None when the probe gives no
    per-example scores)."""
    examples_needed: int | None = None
    """For UNCLEAR: about how many paired examples would settle it, if the change stayed."""
    details_before: Details = Field(default_factory=dict)
    """The probe's details on the base model (counts, secondary metrics)."""
    details_after: Details = Field(default_factory=dict)
    """The probe's details on the tuned model (counts, secondary metrics)."""


class Verdict(Part):
    """The audit's conclusion."""

    degraded: bool
    """At least one capability is WORSE (surely worsened by more than the tolerance)."""
    text: str
    """One line: ``RETAINED: ...``, ``UNCLEAR: ...`` or ``FORGOT: ...``."""
    outcome: Literal["RETAINED", "UNCLEAR", "FORGOT"] | None = None
    """FORGOT when a capability is WORSE, UNCLEAR when none is but one is UNCLEAR, else
    RETAINED (files before intervals: None)."""


class AuditRecord(Record):
    """results.json of `retain audit`

    Base and tuned models scored on one capability suite, the change per capability and the
    verdict. Files written before the format key existed are recognised by kind = audit.
    """

    FORMAT: ClassVar[str] = "retain.audit/1"
    WRITER: ClassVar[str] = "retain audit"

    format: Literal["retain.audit/1"] = "retain.audit/1"
    """The file's format and version: ``retain.audit/1``."""
    kind: Literal["audit"] = "audit"
    """Always ``audit`` (how files written before ``format`` existed are recognised)."""
    retain_version: str
    """The version of retain that wrote the file."""
    created: str = Field(json_schema_extra={"format": "date-time"})
    """When the audit finished: ISO 8601 date and time in UTC, to the second."""
    suite: SuiteInfo
    """The capability suite both models were scored on."""
    base: ModelInfo
    """The base (starting) model."""
    tuned: ModelInfo
    """The tuned (fine-tuned) model."""
    tolerance: float = Field(ge=0, lt=1)
    """Relative degradation above which a capability counts as worse (fraction, 0.02 = 2 %)."""
    capabilities: list[Capability]
    """Every capability of the suite, in the suite's order."""
    verdict: Verdict
    """The audit's conclusion."""
    warnings: list[str]
    """What the reader of the verdict should know about the comparison itself (different
    tokenizers, the same model twice)."""
    seconds: float
    """Wall time of the whole audit (seconds)."""
