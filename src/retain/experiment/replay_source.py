"""A replay source from YAML: general text rehearsed while a causal LM learns a new domain.

``{name: replay, ratio: 0.25, source: {dataset: general_text, split: test, n: 256}}`` replays
``n`` texts of a dataset (rows ``skip .. skip + n`` of ``split``) as a task before the first,
the rehearsal of pretraining-like data that Scialom et al. (2022, "Fine-tuned language
models are continual learners") and most LLM fine-tuning recipes use against forgetting. Text
that any perplexity probe of the suite scores is removed from the source first (the count is
said), so the capability is still measured on text the model never trained on; the strategy then
checks the rest against the same texts (``exclude_texts``).

Causal-LM models only (``model.kind: causal-lm``); each text is one example of its first
``max_length`` tokens, as the config's tasks are.
"""

from __future__ import annotations

import warnings
from typing import Any

from pydantic import Field, ValidationError

from retain.data.task import Task
from retain.data.text import causal_lm_task
from retain.errors import RetainError
from retain.evaluation.suite import EvalSuite
from retain.experiment.config import ExperimentConfig
from retain.experiment.dataset_rows import require_columns, rows_of
from retain.experiment.sections import Section

__all__ = ["ReplaySourceSection", "build_replay_source", "evaluation_texts"]


class ReplaySourceSection(Section):
    """Where a replay source's texts come from.

    Attributes:
        dataset: a registry name (``retain ls``), a local text file or a hub dataset.
        split: the split to read (``general_text`` has only ``test``).
        skip: rows of the split left out first (e.g. those a probe scores).
        n: texts taken after them.
        text_column: the column holding the text.
        max_length: tokens per example (texts are truncated).
    """

    dataset: str
    split: str = "train"
    skip: int = Field(default=0, ge=0)
    n: int = Field(default=256, ge=1)
    text_column: str = "text"
    max_length: int = Field(default=128, ge=2)


def build_replay_source(
    raw: Any, config: ExperimentConfig, suite: EvalSuite | None, tokenizer: Any, where: str
) -> Task | None:
    """The replay source ``raw`` describes (None without a ``tokenizer``: settings checked
    only, as a sweep's up-front check does); one-line :class:`RetainError` otherwise."""
    try:
        section = ReplaySourceSection.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "source"
        raise RetainError(f"{where}.source.{key}: {first['msg']}") from None
    if config.model.kind != "causal-lm":
        raise RetainError(
            f"{where}.source replays text for a causal LM, and model {config.model.name!r} is "
            f"kind {config.model.kind}; drop source (replay then keeps earlier tasks' examples)"
        )
    if tokenizer is None:
        return None
    from retain.assets.datasets import load_dataset

    data = load_dataset(section.dataset)
    rows = rows_of(data, section.split, section.skip + section.n, f"{where}.source")
    require_columns(rows, [section.text_column], f"{where}.source", section.dataset)
    texts = list(rows[section.text_column])[section.skip :]
    scored = set(evaluation_texts(suite))
    kept = [t for t in texts if t.strip() and t not in scored]
    if not kept:
        raise RetainError(
            f"{where}.source: no text of {section.dataset!r} rows {section.skip}.."
            f"{section.skip + section.n} is left outside the suite's evaluation texts; raise "
            "skip or n"
        )
    if len(kept) < len(texts):
        warnings.warn(
            f"{where}.source: {len(texts) - len(kept)} of {len(texts)} texts dropped (empty, or "
            "scored by the suite, which keeps them for evaluation only)",
            UserWarning,
            stacklevel=2,
        )
    return causal_lm_task(
        f"replay-{section.dataset}", tokenizer, kept, block_size=section.max_length, pack=False
    )


def evaluation_texts(suite: EvalSuite | None) -> list[str]:
    """Every text a probe of ``suite`` scores (probes that keep their ``texts``)."""
    if suite is None:
        return []
    texts: list[str] = []
    for probe in suite.probes:
        texts.extend(getattr(probe, "texts", None) or [])
    return texts
