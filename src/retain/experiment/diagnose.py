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
import re
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retain.assets.models import check_model_reference, load_model
from retain.data.task import Batch, Task
from retain.data.text import causal_lm_task
from retain.diagnostics.drift import parameter_drift
from retain.diagnostics.fisher import estimate_fisher
from retain.diagnostics.importance import fisher_overlap
from retain.diagnostics.interference import gradient_interference
from retain.diagnostics.output_shift import output_shift
from retain.diagnostics.similarity import representation_shift
from retain.distributed import is_main_process
from retain.errors import RetainError
from retain.experiment.audit import resolve_device
from retain.experiment.diagnose_inputs import adapter_warning, dataset_texts, model_kinds
from retain.experiment.run_dir import check_output_dir, output_directory
from retain.output_dirs import output_lock

__all__ = ["DIAGNOSTICS", "DiagnoseConfig", "run_diagnose"]

DIAGNOSTICS = ("drift", "importance", "interference", "representation", "output")
_NEEDS_LM = ("importance", "interference", "output")
_NEEDS_DATA = ("importance", "interference")


@dataclass(frozen=True)
class DiagnoseConfig:
    """Everything a diagnosis needs.

    Attributes:
        base, tuned: the models (registry name, folder, hub id; ``tuned`` may be an adapter).
        data: the new task's dataset (registry name, file, hub name), its ``train`` split's text.
        general: held-out general text (prior capability), its ``test`` split (else ``train``).
        text_column: column of ``data`` holding the text (default: the dataset's own, or ``text``).
        general_column: the same for ``general``.
        only: which diagnostics to compute (default None: every one that applies; a named one
            that cannot run is an error).
        samples: sequences of general text for CKA and KL.
        fisher_samples: sequences per Fisher (general text and new task).
        batches: mini-batch pairs for the gradient interference.
        batch_size: sequences per forward pass.
        max_length: tokens per sequence.
        max_tokens: token positions per layer for CKA.
        top: fraction of parameters counted critical per capability (quadrants).
        exclude: regular expression of parameter names left out of the drift.
        out, overwrite: run directory to create (``None``: print only).
        adapter_base, trust_remote_code, device: as for ``retain audit``.
    """

    base: str
    tuned: str
    data: str | None = None
    general: str = "general_text"
    text_column: str | None = None
    general_column: str | None = None
    only: tuple[str, ...] | None = None
    samples: int = 32
    fisher_samples: int = 16
    batches: int = 4
    batch_size: int = 8
    max_length: int = 128
    max_tokens: int = 2048
    top: float = 0.1
    exclude: str | None = None
    out: Path | None = None
    overwrite: bool = False
    adapter_base: str | None = None
    trust_remote_code: bool = False
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        resolve_device(self.device)
        if isinstance(self.only, str):
            object.__setattr__(self, "only", (self.only,))
        named = self.only
        unknown = [] if named is None else [d for d in named if d not in DIAGNOSTICS]
        if unknown or named == ():
            raise RetainError(
                f"unknown diagnostic {unknown[0] if unknown else '(none)'!r}; choose from "
                f"{', '.join(DIAGNOSTICS)}"
            )
        if self.exclude is not None:
            try:
                re.compile(self.exclude)
            except re.error as exc:
                raise RetainError(
                    f"exclude {self.exclude!r} is not a regular expression: {exc}"
                ) from None
        for name in ("samples", "fisher_samples", "batches", "batch_size", "max_length"):
            if int(getattr(self, name)) < 1:
                raise RetainError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 2:
            raise RetainError(f"max_length must be >= 2, got {self.max_length}")
        if not 0 < self.top < 1:
            raise RetainError(f"top must be a fraction in (0, 1) (0.1 = 10 %), got {self.top}")


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


def _skipped(config: DiagnoseConfig, kind: str) -> dict[str, str]:
    """``{diagnostic: why it cannot run}``; a diagnostic named in ``only`` that cannot run is an
    error instead."""
    skipped: dict[str, str] = {}
    for name in config.only or DIAGNOSTICS:
        if name in _NEEDS_LM and kind != "causal-lm":
            skipped[name] = (
                f"needs a causal language model (a next-token loss); these are {kind} models"
            )
        elif name in _NEEDS_DATA and config.data is None:
            skipped[name] = "needs the new task's data (--data NAME)"
    if config.only is not None and skipped:
        name, reason = next(iter(skipped.items()))
        raise RetainError(f"diagnostic {name!r} cannot run: it {reason}")
    return skipped


def run_diagnose(
    config: DiagnoseConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Compute the diagnostics; return (and write) the results dictionary.

    ``config.out`` is locked for the whole command (:func:`retain.output_dirs.output_lock`).
    """
    with nullcontext() if config.out is None else output_lock(config.out):
        return _diagnose(config, progress)


def _diagnose(config: DiagnoseConfig, progress: Callable[[str], None] | None) -> dict[str, Any]:
    say = progress or (lambda _line: None)
    start = time.perf_counter()
    if config.out is not None:
        check_output_dir(config.out, overwrite=config.overwrite, kind="diagnose")
    check_model_reference(config.base, reach_hub=True)
    check_model_reference(config.tuned, reach_hub=True, adapter_base=config.adapter_base)
    kind, warnings = model_kinds(config.base, config.tuned)
    warnings += adapter_warning(config.base, config.tuned, config.adapter_base)
    skipped = _skipped(config, kind)
    wanted = [d for d in config.only or DIAGNOSTICS if d not in skipped]
    general = dataset_texts(
        config.general, config.general_column, ("test", "validation", "train"), "--general-column"
    )
    new_texts = (  # read even when unused, so a wrong --data is an error before any work
        dataset_texts(config.data, config.text_column, ("train", "test"), "--text-column")
        if config.data
        else []
    )
    device = resolve_device(config.device)
    say(f"base: loading {config.base}")
    base = load_model(config.base, kind=kind, trust_remote_code=config.trust_remote_code)
    say(f"tuned: loading {config.tuned}")
    tuned = load_model(
        config.tuned,
        kind=kind,
        adapter_base=config.adapter_base,
        trust_remote_code=config.trust_remote_code,
    )
    base.model.to(device)
    tuned.model.to(device)
    tokenizer = base.tokenizer
    if base.describe()["tokenizer"] != tuned.describe()["tokenizer"]:
        warnings.append(
            "base and tuned use different tokenizers: both read the base tokenizer's ids, so the "
            "tuned model's CKA and KL are measured on text tokenized for the base"
        )
    for warning in warnings:
        say(f"warning: {warning}")
    results: dict[str, Any] = dict.fromkeys(DIAGNOSTICS)
    if kind == "causal-lm":
        general_task = _lm_task("general", tokenizer, general, config)
        batches = general_task.batches(config.batch_size, limit=config.samples)
    else:
        general_task = None
        batches = _encoder_batches(tokenizer, general[: config.samples], config)
    timings: dict[str, float] = {}
    clock = start

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now

    lap("loading")
    if "drift" in wanted:
        say("drift: comparing weights")
        results["drift"] = parameter_drift(
            base.model, tuned.model, exclude=config.exclude
        ).to_dict()
        lap("drift")
    if "representation" in wanted:
        say(f"representation: CKA per layer on {len(batches)} batches of {config.general}")
        shift = representation_shift(
            base.model, tuned.model, batches, max_tokens=config.max_tokens, progress=_bar("CKA")
        )
        results["representation"] = [vars(layer) for layer in shift]
        lap("representation")
    if "output" in wanted:
        say(f"output: next-token KL on {len(batches)} batches of {config.general}")
        results["output"] = output_shift(
            base.model, tuned.model, batches, tokenizer=tokenizer, progress=_bar("KL")
        ).to_dict()
        lap("output")
    if (
        general_task is not None
        and new_texts
        and ("importance" in wanted or "interference" in wanted)
    ):
        assert config.data is not None
        new_task = _lm_task(config.data, tokenizer, new_texts, config)
        if "importance" in wanted:
            say(f"importance: Fisher on {config.fisher_samples} sequences of each text")
            fisher_kw: dict[str, Any] = {
                "max_samples": config.fisher_samples,
                "batch_size": config.batch_size,
            }
            old = estimate_fisher(
                base.model, general_task, progress=_bar("Fisher (general)"), **fisher_kw
            )
            new = estimate_fisher(base.model, new_task, progress=_bar("Fisher (new)"), **fisher_kw)
            results["importance"] = fisher_overlap(
                old, new, top=config.top, seed=config.seed
            ).to_dict()
            del old, new
            lap("importance")
        if "interference" in wanted:
            say(f"interference: {config.batches} gradient pairs at the base weights")
            results["interference"] = gradient_interference(
                base.model,
                new_task,
                general_task,
                batches=config.batches,
                batch_size=config.batch_size,
                progress=_bar("interference"),
            ).to_dict()
            lap("interference")
    from retain.version import __version__

    results = {
        "format": "retain.diagnose/1",
        "kind": "diagnose",
        "retain_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "base": base.describe(),
        "tuned": tuned.describe(),
        "settings": {
            "data": config.data,
            "general": config.general,
            "model_kind": kind,
            "samples": config.samples,
            "fisher_samples": config.fisher_samples,
            "batches": config.batches,
            "batch_size": config.batch_size,
            "max_length": config.max_length,
            "max_tokens": config.max_tokens,
            "top": config.top,
            "exclude": config.exclude,
            "device": str(device),
        },
        **results,
        "skipped": skipped,
        "warnings": warnings,
        "timings": timings,
        "seconds": time.perf_counter() - start,
    }
    if config.out is not None and is_main_process():
        from retain.report.diagnose_report import write_diagnose_report

        with output_directory(config.out, overwrite=config.overwrite, kind="diagnose") as tmp:
            write_diagnose_report(tmp, results)
    return results
