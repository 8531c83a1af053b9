"""``retain audit``: what did this fine-tune forget? Compare two checkpoints on a capability suite.

The base (starting) and tuned models are each a registry name, a local folder, a hub id, or a PEFT
adapter folder. Both are scored by the same suite; the result is an
:class:`~retain.records.audit.AuditRecord`, and the run directory gets it as ``results.json`` with
``report.md``, the self-contained ``report.html`` and its figure ``plots/interval_forest.png``,
written only once everything succeeded.
"""

from __future__ import annotations

import datetime as _dt
import gc
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retain.assets.models import LoadedModel, check_model_reference, load_model
from retain.distributed import is_main_process, resolve_device
from retain.errors import RetainError
from retain.evaluation.lm_eval_tasks import lm_eval_suite, parse_lm_eval_suite
from retain.evaluation.suite import CapabilityChange, EvalSuite, verdict
from retain.evaluation.suites import SUITES, SuiteSize
from retain.experiment.run_dir import check_output_dir, output_directory, write_text
from retain.output_dirs import output_lock
from retain.records.audit import AuditRecord, Capability, Interval, SuiteInfo, Verdict
from retain.records.parts import ModelInfo
from retain.report.audit_html import write_audit_html
from retain.report.audit_report import audit_markdown

__all__ = ["AuditConfig", "resolve_device", "run_audit"]


@dataclass(frozen=True)
class AuditConfig:
    """Everything an audit needs.

    Attributes:
        base: the starting model (registry name, folder, hub id).
        tuned: the fine-tuned model (same forms, or a PEFT adapter folder).
        suite: a named capability suite (``general`` for causal LMs, ``encoder`` for encoders).
        out: run directory to create (``None``: print only).
        tolerance: relative degradation above which a capability counts as worse (0.02 = 2 %).
        size: ``"full"`` (default) or ``"quick"`` (smaller probe sets, for smoke tests).
        adapter_base: base model for a PEFT adapter ``tuned`` (default: recorded in the adapter).
        overwrite: replace an existing, non-empty ``out``.
        trust_remote_code: allow model code from the hub (off by default).
        device: where to evaluate: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``,
            ``"cuda"``, ``"cuda:1"`` ...
        lm_eval_include: folders of lm-eval task YAMLs for a suite ``lm-eval:task,task``.
        limit: documents per lm-eval task (None: all).
        num_fewshot: in-context examples per lm-eval document (None: the task's default).
    """

    base: str
    tuned: str
    suite: str = "general"
    out: Path | None = None
    tolerance: float = 0.02
    size: SuiteSize = "full"
    adapter_base: str | None = None
    overwrite: bool = False
    trust_remote_code: bool = False
    device: str = "auto"
    lm_eval_include: tuple[Path, ...] = ()
    limit: int | None = None
    num_fewshot: int | None = None

    def __post_init__(self) -> None:
        resolve_device(self.device)
        lm_eval = parse_lm_eval_suite(self.suite) is not None
        given = [
            flag
            for flag, value in (
                ("--lm-eval-include", self.lm_eval_include),
                ("--limit", self.limit),
                ("--num-fewshot", self.num_fewshot),
            )
            if value not in (None, ())
        ]
        if given and not lm_eval:
            raise RetainError(
                f"{given[0]} applies to lm-eval tasks; use --suite lm-eval:TASK[,TASK...] or "
                "drop it"
            )
        if self.limit is not None and self.limit < 1:
            raise RetainError(f"--limit must be at least 1 document per task, got {self.limit}")
        if not (math.isfinite(self.tolerance) and 0 <= self.tolerance < 1):
            hint = (
                f"; did you mean {self.tolerance / 100:g} ({self.tolerance:g} %)?"
                if 1 <= self.tolerance < 100
                else ""
            )
            raise RetainError(
                f"tolerance must be a fraction in [0, 1) (0.02 = 2 %); got {self.tolerance:g}{hint}"
            )
        if self.size not in ("full", "quick"):
            raise RetainError(f"size must be 'full' or 'quick'; got {self.size!r}")


def run_audit(config: AuditConfig, progress: Callable[[str], None] | None = None) -> AuditRecord:
    """Evaluate base and tuned models on the suite; return (and write) the audit's record.

    Every input is checked before the first model is loaded, so a typo costs no time, and both
    models are loaded before either is scored, so a broken tuned model fails before the base's
    evaluation; the run directory appears only when the audit finished, written by the main
    process only; ``config.out`` is locked for the whole audit
    (:func:`retain.output_dirs.output_lock`).
    """
    with nullcontext() if config.out is None else output_lock(config.out):
        return _audit(config, progress)


def _audit(config: AuditConfig, progress: Callable[[str], None] | None) -> AuditRecord:
    say = progress or (lambda _line: None)
    start = time.perf_counter()
    names = parse_lm_eval_suite(config.suite)
    factory = SUITES.get(config.suite) if names is None else None
    if config.out is not None:
        check_output_dir(config.out, overwrite=config.overwrite, kind="audit")
    kind = "causal-lm" if factory is None else factory.model_kind
    # Fail fast on typos and mismatches, before minutes of work.
    check_model_reference(config.base, reach_hub=True, kind=kind)
    check_model_reference(config.tuned, reach_hub=True, kind=kind, adapter_base=config.adapter_base)
    if factory is not None:
        suite: EvalSuite = factory.build(config.size)
    else:
        say(f"loading lm-eval tasks {', '.join(names or [])}")
        suite = lm_eval_suite(
            names or [],
            include=config.lm_eval_include,
            num_fewshot=config.num_fewshot,
            limit=config.limit,
        )
    base_info, tuned_info, changes = _score_pair(config, suite, kind, say)
    outcome, line = verdict(changes, config.tolerance)
    warnings = _warnings(config, base_info, tuned_info)
    for warning in warnings:
        say(f"warning: {warning}")
    from retain.version import __version__

    record = AuditRecord(
        retain_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        suite=SuiteInfo(name=suite.name, description=suite.description, size=config.size),
        base=base_info,
        tuned=tuned_info,
        tolerance=config.tolerance,
        capabilities=[_capability(c, config.tolerance) for c in changes],
        verdict=Verdict(degraded=outcome == "FORGOT", text=line, outcome=outcome),
        warnings=warnings,
        seconds=time.perf_counter() - start,
    )
    if config.out is not None and is_main_process():
        with output_directory(config.out, overwrite=config.overwrite, kind="audit") as tmp:
            record.write(tmp / "results.json")
            write_text(tmp / "report.md", audit_markdown(record))
            write_audit_html(tmp, record)
    return record


def _capability(change: CapabilityChange, tolerance: float) -> Capability:
    """One capability's scores and change, ``worsened`` judged at relative ``tolerance``."""
    moved, paired = change.change, change.paired
    judgement = change.judgement(tolerance)
    return Capability(
        name=change.name,
        metric=change.before.metric,
        higher_is_better=change.before.higher_is_better,
        before=moved.before,
        after=moved.after,
        change=moved.change,
        relative_change=moved.relative_change,
        degradation=moved.degradation,
        relative_degradation=moved.relative_degradation,
        worsened=moved.worsened(tolerance),
        verdict=judgement.verdict,
        interval=Interval.of(paired),
        examples_needed=judgement.examples_needed,
        details_before=change.before.details,
        details_after=change.after.details,
    )


def _score_pair(
    config: AuditConfig, suite: EvalSuite, kind: Any, say: Callable[[str], None]
) -> tuple[ModelInfo, ModelInfo, list[CapabilityChange]]:
    """Load both models, then score the suite on the base (its baseline) and on the tuned one;
    returns both models' descriptions and the changes."""
    device = resolve_device(config.device)

    def load(name: str, label: str, adapter_base: str | None) -> LoadedModel:
        say(f"{label}: loading {name}")
        return load_model(
            name,
            kind=kind,
            adapter_base=adapter_base,
            trust_remote_code=config.trust_remote_code,
        )

    def evaluate(loaded: LoadedModel, label: str) -> Any:
        loaded.model.to(device)
        say(f"{label}: evaluating suite {suite.name!r} on {device}")
        return suite.evaluate(loaded.model, loaded.tokenizer, progress=say)

    # Both models load (and pass their weight and tokenizer checks) before any scoring, so a
    # broken tuned model fails in seconds, not after the base's minutes; both wait on the CPU.
    base = load(config.base, "base", None)
    tuned = load(config.tuned, "tuned", config.adapter_base)
    base_info = ModelInfo.model_validate(base.describe())
    tuned_info = ModelInfo.model_validate(tuned.describe())
    suite.set_baseline(evaluate(base, "base"))
    del base  # free the base (and its device memory) before the tuned model moves there
    gc.collect()
    tuned_result = evaluate(tuned, "tuned")
    del tuned
    gc.collect()
    return base_info, tuned_info, suite.compare(tuned_result)


def _warnings(config: AuditConfig, base_info: ModelInfo, tuned_info: ModelInfo) -> list[str]:
    """What the reader of the verdict should know about the comparison itself."""
    warnings = []
    if base_info.tokenizer != tuned_info.tokenizer:
        warnings.append(
            "base and tuned use different tokenizers: token-level perplexity is not comparable "
            "between them; compare bits_per_byte in the details"
        )
    if config.adapter_base is None and _same_reference(config.base, config.tuned):
        warnings.append(
            "base and tuned are the same model: every change measured is evaluation noise"
        )
    return warnings


def _same_reference(a: str, b: str) -> bool:
    """Whether two model references name the same registry entry, folder or hub id."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b
