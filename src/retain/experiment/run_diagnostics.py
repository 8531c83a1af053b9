"""The ``diagnostics`` section of a run: gradient interference during training, and the
representational and output shift of the final model from a reference copy.

* ``interference_every: N``: an :class:`~retain.diagnostics.interference.InterferenceTracker`
  goes first in the strategy chain. Its prior capability is held-out general text
  (``general_text``, blocks of the first task's ``max_length``) for a causal LM, else the earlier
  tasks of the sequence. ``results.json`` gets ``interference``: the settings, every record and
  the summary (conflicting fraction, mean cosine, mean per layer).
* ``shift: true``: a copy of the model before training (``shift_from: start``) or right after the
  first task (``first_task``) is kept; after the run, linear CKA per layer and, for a causal LM,
  the next-token KL go to ``shift``: for a causal LM on held-out general text (what it forgets),
  else on the first task's test examples. From the start, the shift includes what the first
  task itself changed; from the first task, it is how far the later tasks moved the
  representation that task's head reads. Models without hidden states (an MLP) get
  ``representation: None`` and the reason.
"""

from __future__ import annotations

import copy

from torch import nn

from retain.assets.datasets import load_dataset
from retain.data.task import Task
from retain.data.text import causal_lm_task
from retain.diagnostics.interference import InterferenceTracker
from retain.diagnostics.output_shift import output_shift
from retain.diagnostics.similarity import representation_shift
from retain.errors import RetainError
from retain.experiment.build import Experiment
from retain.experiment.config import ExperimentConfig
from retain.records.parts import CkaLayer, OutputShift
from retain.records.run import (
    InterferenceRecord,
    InterferenceStep,
    InterferenceSummary,
    ShiftRecord,
)

__all__ = ["interference_results", "interference_tracker", "reference_copy", "shift_results"]

_GENERAL = "general_text"


def _general_blocks(built: Experiment, config: ExperimentConfig) -> Task:
    """Held-out general text in blocks of the first task's ``max_length`` tokens."""
    texts = [t for t in load_dataset(_GENERAL)["test"]["text"] if t.strip()]
    return causal_lm_task(_GENERAL, built.tokenizer, texts, block_size=config.tasks[0].max_length)


def interference_tracker(config: ExperimentConfig, built: Experiment) -> InterferenceTracker | None:
    """The tracker the config asks for (None when ``interference_every`` is 0)."""
    settings = config.diagnostics
    if not settings.interference_every:
        return None
    every, samples = settings.interference_every, settings.interference_samples
    if config.model.kind == "causal-lm":
        prior = _general_blocks(built, config)
        return InterferenceTracker(
            every, samples, prior=prior.with_examples(prior.examples[:samples])
        )
    return InterferenceTracker(every, samples, tasks=[split.train for split in built.splits])


def interference_results(
    tracker: InterferenceTracker | None, config: ExperimentConfig
) -> InterferenceRecord | None:
    """``results.json``'s ``interference`` entry (None without a tracker)."""
    if tracker is None:
        return None
    return InterferenceRecord(
        every=tracker.every,
        samples=tracker.samples,
        prior=_GENERAL if tracker.prior is not None else "earlier tasks",
        records=[InterferenceStep.model_validate(r) for r in tracker.records],
        summary=InterferenceSummary.model_validate(tracker.summary()),
    )


def reference_copy(config: ExperimentConfig, model: nn.Module, finished: int) -> nn.Module | None:
    """A frozen copy of ``model`` when it is the shift's reference: before any task
    (``finished == 0``) for ``shift_from: start``, after the first (``finished == 1``) for
    ``first_task``; else None."""
    settings = config.diagnostics
    wanted = {"start": 0, "first_task": 1}[settings.shift_from]
    if not settings.shift or finished != wanted:
        return None
    start = copy.deepcopy(model).eval()
    for param in start.parameters():
        param.requires_grad_(False)
    return start


def shift_results(
    config: ExperimentConfig, built: Experiment, start: nn.Module | None, final: nn.Module
) -> ShiftRecord | None:
    """``results.json``'s ``shift`` entry: CKA per layer and (causal LMs) the output shift of
    ``final`` from the reference copy ``start``: on held-out general text for a causal LM (what
    it forgets), else on the first task's test examples."""
    if not config.diagnostics.shift:
        return None
    first = built.splits[0].test
    reference = "start" if config.diagnostics.shift_from == "start" else f"after {first.name}"
    size, limit = config.training.batch_size, config.diagnostics.shift_samples
    if config.model.kind == "causal-lm":  # what an LM forgets: held-out general text
        data, task = _GENERAL, _general_blocks(built, config)
    else:
        data, task = first.name, first
    if start is None:  # a run resumed after the reference point: the copy was not kept
        reason = "the run resumed after its reference point; rerun it whole for the shift"
        return ShiftRecord(
            data=data,
            reference=reference,
            representation=None,
            output=None,
            skipped={"representation": reason, "output": reason},
        )
    batches = [
        {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        for batch in task.batches(size, limit=limit)
    ]
    result = ShiftRecord(data=data, reference=reference, representation=None, output=None)
    skipped: dict[str, str] = {}
    if not batches or "input_ids" not in batches[0]:
        skipped["representation"] = "the tasks are not token sequences (no hidden states)"
    else:
        try:
            shift = representation_shift(start, final, batches)
            result.representation = [CkaLayer.model_validate(vars(layer)) for layer in shift]
        except RetainError as err:
            skipped["representation"] = str(err)
        if config.model.kind == "causal-lm":
            measured = output_shift(start, final, batches, tokenizer=built.tokenizer)
            result.output = OutputShift.model_validate(measured.to_dict())
    if config.model.kind != "causal-lm":
        skipped["output"] = "needs a causal language model"
    result.skipped = skipped
    return result
