"""``retain diagnose``: why did a fine-tune forget? Compare a base and a tuned checkpoint layer by
layer.

Both models are a registry name, a local folder, a hub id, or (``tuned``) a PEFT adapter folder,
loaded merged. On held-out general text (``general``, default ``general_text``) and the new task's
text (``data``, the fine-tuning data, optional):

* ``drift``: parameter drift per layer and module (:mod:`retain.diagnostics.drift`);
* ``importance``: Fisher importance of the general text (prior capability) and of the new task at
  the base weights, per layer, their quadrants and overlap (:mod:`retain.diagnostics.importance`);
* ``interference``: gradient cosines between the new task and the general text at the base weights
  (:mod:`retain.diagnostics.interference`);
* ``representation``: linear CKA per layer between base and tuned hidden states on general text
  (:mod:`retain.diagnostics.similarity`);
* ``output``: next-token KL from base to tuned, entropy change and the tokens that gained or lost
  the most probability (:mod:`retain.diagnostics.output_shift`).

``importance`` and ``interference`` need ``data``; ``importance``, ``interference`` and ``output``
need a causal LM (a next-token loss). What is not computed is listed in ``skipped`` with the
reason. The run directory (``results.json``, ``report.html``, ``plots/``) appears only when
everything finished, written by the main process.
"""

from __future__ import annotations

import datetime as _dt
import gc
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from retain.assets.models import LoadedModel, ModelKind, check_model_reference, load_model
from retain.data.task import Batch, Task
from retain.data.text import causal_lm_task
from retain.diagnostics.drift import parameter_drift
from retain.diagnostics.fisher import estimate_fisher
from retain.diagnostics.importance import fisher_overlap
from retain.diagnostics.interference import gradient_interference
from retain.diagnostics.output_shift import output_shift
from retain.diagnostics.similarity import representation_shift
from retain.distributed import is_main_process, resolve_device
from retain.experiment.diagnose_config import DIAGNOSTICS, DiagnoseConfig, skipped_diagnostics
from retain.experiment.diagnose_inputs import adapter_warning, dataset_texts, model_kinds
from retain.experiment.run_dir import check_output_dir, output_directory
from retain.output_dirs import output_lock
from retain.records.diagnose import (
    DiagnoseRecord,
    DiagnoseSettings,
    FisherImportance,
    GradientInterference,
    ParameterDrift,
)
from retain.records.parts import CkaLayer, ModelInfo, OutputShift

__all__ = ["DIAGNOSTICS", "DiagnoseConfig", "run_diagnose"]


def _encoder_batches(tokenizer: Any, texts: list[str], config: DiagnoseConfig) -> list[Batch]:
    batches = []
    for start in range(0, len(texts), config.batch_size):
        encoded = tokenizer(
            texts[start : start + config.batch_size],
            truncation=True,
            max_length=config.max_length,
            padding=True,
            return_tensors="pt",
        )
        batches.append({k: encoded[k] for k in ("input_ids", "attention_mask") if k in encoded})
    return batches


def _lm_task(name: str, tokenizer: Any, texts: list[str], config: DiagnoseConfig) -> Task:
    return causal_lm_task(name, tokenizer, texts, block_size=config.max_length)


def _bar(description: str) -> Callable[[int, int], None]:
    from tqdm.auto import tqdm

    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(
                total=total, desc=description, leave=False, file=sys.stderr, disable=None
            )
        state["bar"].update(done - state["bar"].n)
        if done >= total:
            state["bar"].close()

    return update


def run_diagnose(
    config: DiagnoseConfig, progress: Callable[[str], None] | None = None
) -> DiagnoseRecord:
    """Compute the diagnostics; return (and, with ``config.out``, write) the record.

    ``config.out`` is locked for the whole command (:func:`retain.output_dirs.output_lock`).
    """
    with nullcontext() if config.out is None else output_lock(config.out):
        return _diagnose(config, progress)


@dataclass
class _Plan:
    """What a diagnosis will do, decided before any model loads."""

    kind: ModelKind
    wanted: list[str]
    skipped: dict[str, str]
    warnings: list[str]
    general: list[str]
    new_texts: list[str]


@dataclass
class _Sections:
    """The diagnostics computed so far (None: not computed)."""

    drift: ParameterDrift | None = None
    importance: FisherImportance | None = None
    interference: GradientInterference | None = None
    representation: list[CkaLayer] | None = None
    output: OutputShift | None = None


class _Laps:
    """Seconds spent in each phase, by name."""

    def __init__(self, start: float) -> None:
        self.timings: dict[str, float] = {}
        self._clock = start

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = now - self._clock
        self._clock = now


def _diagnose(config: DiagnoseConfig, progress: Callable[[str], None] | None) -> DiagnoseRecord:
    say = progress or (lambda _line: None)
    start = time.perf_counter()
    plan = _plan(config)
    device = resolve_device(config.device)
    base, tuned = _load_pair(config, plan, device, say)
    models = (ModelInfo.model_validate(base.describe()), ModelInfo.model_validate(tuned.describe()))
    laps = _Laps(start)
    laps.lap("loading")
    results = _Sections()
    general_task = _shape_diagnostics(config, plan, base, tuned, results, laps, say)
    del tuned  # the gradient diagnostics read the base model only: free the tuned weights first
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if general_task is not None and plan.new_texts:
        _gradient_diagnostics(config, plan, base, general_task, results, laps, say)
    record = _record(config, plan, models, str(device), results, laps.timings, start)
    if config.out is not None and is_main_process():
        from retain.report.diagnose_report import write_diagnose_report

        with output_directory(config.out, overwrite=config.overwrite, kind="diagnose") as tmp:
            write_diagnose_report(tmp, record)
    return record


def _plan(config: DiagnoseConfig) -> _Plan:
    """Check every input (nothing loads yet) and decide which diagnostics run."""
    if config.out is not None:
        check_output_dir(config.out, overwrite=config.overwrite, kind="diagnose")
    check_model_reference(config.base, reach_hub=True)
    check_model_reference(config.tuned, reach_hub=True, adapter_base=config.adapter_base)
    kind, warnings = model_kinds(config.base, config.tuned)
    warnings += adapter_warning(config.base, config.tuned, config.adapter_base)
    skipped = skipped_diagnostics(config, kind)
    general = dataset_texts(
        config.general, config.general_column, ("test", "validation", "train"), "--general-column"
    )
    new_texts = (  # read even when unused, so a wrong --data is an error before any work
        dataset_texts(config.data, config.text_column, ("train", "test"), "--text-column")
        if config.data
        else []
    )
    wanted = [d for d in config.only or DIAGNOSTICS if d not in skipped]
    return _Plan(kind, wanted, skipped, warnings, general, new_texts)


def _load_pair(
    config: DiagnoseConfig, plan: _Plan, device: torch.device, say: Callable[[str], None]
) -> tuple[LoadedModel, LoadedModel]:
    """Both models on ``device``; a tokenizer mismatch becomes a warning of the plan."""
    say(f"base: loading {config.base}")
    base = load_model(config.base, kind=plan.kind, trust_remote_code=config.trust_remote_code)
    say(f"tuned: loading {config.tuned}")
    tuned = load_model(
        config.tuned,
        kind=plan.kind,
        adapter_base=config.adapter_base,
        trust_remote_code=config.trust_remote_code,
    )
    base.model.to(device)
    tuned.model.to(device)
    if base.describe()["tokenizer"] != tuned.describe()["tokenizer"]:
        plan.warnings.append(
            "base and tuned use different tokenizers: both read the base tokenizer's ids, so the "
            "tuned model's CKA and KL are measured on text tokenized for the base"
        )
    for warning in plan.warnings:
        say(f"warning: {warning}")
    return base, tuned


def _shape_diagnostics(
    config: DiagnoseConfig,
    plan: _Plan,
    base: LoadedModel,
    tuned: LoadedModel,
    results: _Sections,
    laps: _Laps,
    say: Callable[[str], None],
) -> Task | None:
    """Drift, representation (CKA) and output (KL) into ``results``; returns the general-text
    task of a causal LM (None for an encoder) for the gradient diagnostics."""
    tokenizer = base.tokenizer
    general_task: Task | None = None
    if plan.kind == "causal-lm":
        general_task = _lm_task("general", tokenizer, plan.general, config)
        batches = general_task.batches(config.batch_size, limit=config.samples)
    else:
        batches = _encoder_batches(tokenizer, plan.general[: config.samples], config)
    if "drift" in plan.wanted:
        say("drift: comparing weights")
        drift = parameter_drift(base.model, tuned.model, exclude=config.exclude)
        results.drift = ParameterDrift.model_validate(drift.to_dict())
        laps.lap("drift")
    if "representation" in plan.wanted:
        say(f"representation: CKA per layer on {len(batches)} batches of {config.general}")
        shift = representation_shift(
            base.model, tuned.model, batches, max_tokens=config.max_tokens, progress=_bar("CKA")
        )
        results.representation = [
            CkaLayer(index=layer.index, name=layer.name, cka=layer.cka) for layer in shift
        ]
        laps.lap("representation")
    if "output" in plan.wanted:
        say(f"output: next-token KL on {len(batches)} batches of {config.general}")
        shifted = output_shift(
            base.model,
            tuned.model,
            batches,
            tokenizer=tokenizer,
            progress=_bar("KL"),
            max_memory=config.max_memory,
        )
        results.output = OutputShift.model_validate(shifted.to_dict())
        laps.lap("output")
    return general_task


def _gradient_diagnostics(
    config: DiagnoseConfig,
    plan: _Plan,
    base: LoadedModel,
    general_task: Task,
    results: _Sections,
    laps: _Laps,
    say: Callable[[str], None],
) -> None:
    """Fisher importance and gradient interference of the new text against the general text,
    at the base weights, into ``results``."""
    if "importance" not in plan.wanted and "interference" not in plan.wanted:
        return
    assert config.data is not None
    new_task = _lm_task(config.data, base.tokenizer, plan.new_texts, config)
    if "importance" in plan.wanted:
        say(f"importance: Fisher on {config.fisher_samples} sequences of each text")
        fisher_kw: dict[str, Any] = {
            "max_samples": config.fisher_samples,
            "batch_size": config.batch_size,
            "max_memory": config.max_memory,
        }
        old = estimate_fisher(
            base.model, general_task, progress=_bar("Fisher (general)"), **fisher_kw
        )
        new = estimate_fisher(base.model, new_task, progress=_bar("Fisher (new)"), **fisher_kw)
        overlap = fisher_overlap(old, new, top=config.top, seed=config.seed)
        results.importance = FisherImportance.model_validate(overlap.to_dict())
        del old, new
        laps.lap("importance")
    if "interference" in plan.wanted:
        say(f"interference: {config.batches} gradient pairs at the base weights")
        interference = gradient_interference(
            base.model,
            new_task,
            general_task,
            batches=config.batches,
            batch_size=config.batch_size,
            progress=_bar("interference"),
        )
        results.interference = GradientInterference.model_validate(interference.to_dict())
        laps.lap("interference")


def _settings(config: DiagnoseConfig, kind: str, device: str) -> DiagnoseSettings:
    """The settings section: every setting the config shares with it by name, plus the model's
    kind and the device it ran on."""
    shared = {k: getattr(config, k) for k in DiagnoseSettings.model_fields if hasattr(config, k)}
    return DiagnoseSettings.model_validate({**shared, "model_kind": kind, "device": device})


def _record(
    config: DiagnoseConfig,
    plan: _Plan,
    models: tuple[ModelInfo, ModelInfo],
    device: str,
    results: _Sections,
    timings: dict[str, float],
    start: float,
) -> DiagnoseRecord:
    """``results.json`` of a diagnosis (format ``retain.diagnose/1``); ``models`` describes the
    base and the tuned model."""
    from retain.version import __version__

    return DiagnoseRecord(
        retain_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        base=models[0],
        tuned=models[1],
        settings=_settings(config, plan.kind, device),
        drift=results.drift,
        importance=results.importance,
        interference=results.interference,
        representation=results.representation,
        output=results.output,
        skipped=plan.skipped,
        warnings=plan.warnings,
        timings=timings,
        seconds=time.perf_counter() - start,
    )
