"""Sections that several records share: a model's identity, a score's name and direction, the
paired interval of a capability's change, and the representational and output shift between
two models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from retain.records.base import Num, Part

if TYPE_CHECKING:
    from retain.paired_statistics import PairedChange

__all__ = [
    "CkaLayer",
    "Interval",
    "ModelInfo",
    "OutputShift",
    "Score",
    "TokenShift",
    "TokenizerInfo",
]


class Score(Part):
    """The score of a task sequence: its name and direction."""

    name: str
    """The score's name, e.g. ``accuracy`` or ``perplexity``."""
    higher_is_better: bool
    """True when a larger score is better (accuracy), False otherwise (perplexity)."""


class TokenizerInfo(Part):
    """A tokenizer's class and vocabulary size."""

    class_: str = Field(alias="class")
    """The tokenizer's class name."""
    size: int
    """Vocabulary size (tokens)."""


class ModelInfo(Part):
    """Where a model came from and what it is."""

    name: str
    """The name it was given (registry name, hub id or path)."""
    origin: str
    """How it was found: registry, local folder or hub."""
    path: str | None = None
    """The folder it was read from, when local."""
    class_: str = Field(alias="class")
    """Its class name."""
    parameters: int = Field(ge=0)
    """Number of parameters."""
    tokenizer: TokenizerInfo | None = None
    """Its tokenizer, when it has one."""


class CkaLayer(Part):
    """Linear CKA between two models' hidden states at one layer."""

    index: int
    """Layer index: 0 = embeddings, k + 1 = output of block k."""
    name: str
    """The layer's name."""
    cka: Num
    """Linear CKA (dimensionless, 0 to 1; 1 = the same representation up to rotation and
    scale)."""


class TokenShift(Part):
    """A token whose mean predicted probability changed the most."""

    token_id: int
    """The token's id."""
    token: str
    """The token's text."""
    change: Num
    """Tuned minus base mean probability."""
    base: Num = float("nan")
    """Mean probability under the base (reference) model."""
    tuned: Num = float("nan")
    """Mean probability under the tuned model."""


class OutputShift(Part):
    """How the next-token distribution moved from the base (reference) model to the tuned one.

    ``KL(p_base || q_tuned) = sum_v p_v (log p_v - log q_v)`` per token position, in nats."""

    positions: int
    """Token positions compared."""
    kl_mean: Num
    """Mean KL over positions (nats)."""
    kl_median: Num = float("nan")
    """Median KL (nats)."""
    kl_p90: Num = float("nan")
    """90th percentile of KL (nats)."""
    kl_max: Num = float("nan")
    """Largest KL (nats)."""
    entropy_base: Num
    """Mean entropy of the base model's distribution (nats)."""
    entropy_tuned: Num
    """Mean entropy of the tuned model's distribution (nats)."""
    entropy_change: Num = float("nan")
    """``entropy_tuned - entropy_base`` (nats)."""
    gained: list[TokenShift]
    """Tokens whose mean probability rose the most."""
    lost: list[TokenShift]
    """Tokens whose mean probability fell the most."""
    kl_sample: list[Num] = []
    """A sample of per-position KL values for the histogram (nats)."""


class Interval(Part):
    """The paired uncertainty of a capability's change (:mod:`retain.paired_statistics`)."""

    low: Num
    """Lower end of the percentile bootstrap interval of the relative degradation (fraction)."""
    high: Num
    """Upper end of that interval (fraction)."""
    level: float
    """The interval's coverage (0.95)."""
    p_value: Num
    """Two-sided p-value of "no change" from ``test``."""
    test: str
    """``mcnemar`` (paired correctness) or ``permutation`` (paired swaps)."""
    examples: int
    """Paired examples the interval rests on."""
    resamples: int
    """Bootstrap resamples."""

    @classmethod
    def of(cls, paired: PairedChange | None) -> Interval | None:
        """The record of ``paired`` (None for None: a probe without per-example scores)."""
        return None if paired is None else cls.model_validate(paired, from_attributes=True)
