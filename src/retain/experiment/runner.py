"""``retain run``: one experiment, one seed, into a run directory.

A run directory holds::

    config.yaml      the resolved config of this run (every default filled in; ``seeds`` = [seed])
    results.json     everything measured (format ``retain.run/1``, docs/reference/run-directory.md)
    checkpoints/     safetensors checkpoints (after every task, every ``checkpoints.every`` steps)
    report.html      a self-contained report (plots embedded); plots/*.png the same plots
    progress.json    per-task figures of an unfinished run (removed when results.json appears)
    tracking/        the trackers' files (``tracking.report_to``; ``tracking.dir`` moves them)

Re-running into a directory: a finished run (``results.json``) is refused unless ``overwrite``;
an unfinished run of the *same* config resumes from its newest checkpoint; an unfinished run of
another config, or a folder that is not a run directory, is refused. ``overwrite`` replaces a run
directory but never deletes a folder that is not one. Under ``torchrun``/``accelerate launch``
every process trains; only the main one writes the run directory (checkpoints: every rank its
RNG file, see :mod:`retain.training.checkpoint`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from retain.atomic_files import to_jsonable
from retain.distributed import is_main_process, shard_model
from retain.errors import RetainError
from retain.experiment.build import (
    Experiment,
    build_experiment,
    build_strategies,
)
from retain.experiment.config import (
    ExperimentConfig,
    check_seeds,
    config_to_yaml,
)
from retain.experiment.run_diagnostics import (
    interference_results,
    interference_tracker,
    reference_copy,
    shift_results,
)
from retain.experiment.run_progress import RunProgress
from retain.experiment.run_state import (
    check_run_dir,
    prepare_run_dir,
    run_state,
    same_config,
    undo_fresh_run,
)
from retain.experiment.tracking import run_tracking
from retain.experiment.training_settings import check_training, run_device, train_config
from retain.output_dirs import (
    check_output_parent,
    check_replaceable,
    output_lock,
)
from retain.records.parts import Score
from retain.records.run import (
    BudgetEval,
    BudgetRecord,
    DriftRecord,
    MonitorResult,
    MonitorSettings,
    RunRecord,
    RunResult,
)
from retain.strategies.base import Strategy
from retain.strategies.chain import as_chain
from retain.training.budget import ForgettingBudget
from retain.training.checkpoint import latest_checkpoint
from retain.training.sequence import fit_sequence

__all__ = ["RESULTS_FORMAT", "RunSpec", "run_experiment"]

RESULTS_FORMAT = RunRecord.FORMAT


@dataclass(frozen=True)
class RunSpec:
    """One run: the config (its ``seeds[0]`` is the seed), where to write it, and how.

    Attributes:
        config: the experiment; ``seeds`` beyond the first are ignored here (``retain sweep``
            runs them all).
        out: the run directory (None: ``config.output_dir()``).
        overwrite: replace a finished or different run in ``out``.
        from_checkpoint: resume an unfinished run of the same config from exactly this checkpoint
            folder (``out/checkpoints/tasks/step-N`` or ``.../steps/step-N``) instead of the
            newest complete one.
        report: write report.html and plots/ at the end.
        progress: tqdm bars during training (None: on a terminal).
        say: receives one-line progress messages.
        tracking_dir: where the trackers write when ``tracking.dir`` is null (None:
            ``<out>/tracking``; ``retain sweep`` passes its own, shared by its runs).
    """

    config: ExperimentConfig
    out: Path | None = None
    overwrite: bool = False
    from_checkpoint: Path | None = None
    report: bool = True
    progress: bool | None = None
    say: Callable[[str], None] | None = None
    tracking_dir: Path | None = None


def _report_missing(spec: RunSpec, out: Path, config_yaml: str) -> bool:
    """Whether ``out`` holds this very run, finished, but without its report (the report was
    interrupted or could not be written): then a rerun only writes the report."""
    if spec.overwrite or not spec.report or run_state(out, config_yaml) != "finished":
        return False
    return same_config(out / "config.yaml", config_yaml) and not (out / "report.html").is_file()


def _finish_report(spec: RunSpec, out: Path) -> RunRecord:
    """Write the missing report of the finished run in ``out``; returns its results."""
    from retain.report.write import load_results

    results = load_results(out)
    if is_main_process():
        _write_report(out)
    (spec.say or (lambda _line: None))(
        f"{out} holds this run, finished; wrote its missing {out / 'report.html'}"
    )
    return results


def _write_report(out: Path) -> None:
    """The run's report; a failure names the remedy (the results are already safe)."""
    from retain.report.write import write_run_report

    try:
        write_run_report(out)
    except RetainError as err:
        raise RetainError(
            f"{err} (the run finished and results.json is written; rerun the same command or "
            f"`retain report {out}` to write the report)"
        ) from err


def run_experiment(spec: RunSpec) -> RunRecord:
    """Train ``spec.config``'s task sequence with its first seed; returns the record written to
    ``results.json``.

    The run directory is described in the module docstring; the report is written by
    :func:`retain.report.write.write_run_report`. The folder is locked for the whole run
    (:func:`retain.output_dirs.output_lock`); every input and setting that can be checked is
    checked before the first byte is written, and a fresh run that fails with no checkpoint to
    resume from leaves nothing behind.
    """
    config = spec.config
    check_seeds(config.seeds[:1], "seed")
    config = config.model_copy(update={"seeds": config.seeds[:1]})
    out = spec.out or config.output_dir()
    check_output_parent(out)  # the lock lives beside it
    with output_lock(out):
        return _run(spec, config, out)


def _run(spec: RunSpec, config: ExperimentConfig, out: Path) -> RunRecord:
    seed = config.seeds[0]
    config_yaml = config_to_yaml(config)
    if _report_missing(spec, out, config_yaml):
        return _finish_report(spec, out)
    # every process checks, before anything is written
    state = check_run_dir(out, config_yaml, spec.overwrite)
    if spec.from_checkpoint is not None and state != "resume":
        raise RetainError(
            f"--from-checkpoint continues an unfinished run of the same config, and {str(out)!r} "
            f"holds {'nothing' if state == 'new' else 'a ' + state + ' run'}; drop the option"
        )
    if state == "resume" and spec.from_checkpoint is None:
        why = _nothing_to_resume(out, config)
        if why:
            (spec.say or (lambda _line: None))(
                f"nothing to resume in {out} ({why}): starting afresh"
            )
            check_replaceable(out, "run")
            state = "different"  # replaced like an unfinished run of another config
    resume = state == "resume"
    begin = time.perf_counter()
    built = build_experiment(config, seed)  # bad data or names fail here, with nothing written
    strategies = build_strategies(config.strategies, config, built.suite, built.tokenizer)
    check_training(config)
    created = prepare_run_dir(out, config_yaml, state)
    try:
        return _train(spec, config, out, built, strategies, resume, begin)
    except BaseException:
        if not resume:
            undo_fresh_run(out, created)
        raise


def _nothing_to_resume(out: Path, config: ExperimentConfig) -> str:
    """Why the unfinished run in ``out`` cannot resume and may simply start again ("" when it
    can resume). Finished tasks whose checkpoints are gone are an error, never a silent restart."""
    if not config.checkpoints.enabled:
        return "checkpoints are off"
    folder = out / "checkpoints"
    if any(latest_checkpoint(folder / part) is not None for part in ("tasks", "steps")):
        return ""
    if (out / "progress.json").is_file():
        raise RetainError(
            f"{str(out)!r} has finished tasks (progress.json) but no complete checkpoint to "
            "resume from; pass --overwrite to start afresh"
        )
    return "no checkpoint was written yet"


def _train(
    spec: RunSpec,
    config: ExperimentConfig,
    out: Path,
    built: Experiment,
    strategies: list[Strategy],
    resume: bool,
    begin: float,
) -> RunRecord:
    say = spec.say or (lambda _line: None)
    say(
        ("resuming" if resume else "starting") + f" {config.name} [{config.variant_label}] "
        f"seed {config.seeds[0]} in {out}"
    )
    reference = [reference_copy(config, built.model, 0)]
    tracker = interference_tracker(config, built)
    budgets = [s for s in strategies if isinstance(s, ForgettingBudget)]
    budget = budgets[0] if budgets else None
    progress = RunProgress.start(out / "progress.json", built.model, budget, resume)

    stages = 1 if config.reference == "joint" else len(built.splits)

    def after_task(t: int, model: nn.Module) -> None:
        if reference[0] is None:
            reference[0] = reference_copy(config, model, t + 1)
        progress.task_done(t, model)
        label = "joint" if config.reference == "joint" else built.splits[t].train.name
        say(f"  task {t + 1}/{stages} ({label}) done")

    with run_tracking(config, spec.tracking_dir or out / "tracking", budget, say) as tracking:
        model, result = fit_sequence(
            built.model,
            built.splits,
            strategies if tracker is None else [tracker, *strategies],
            train_config(config, config.seeds[0]),
            built.score,
            suite=built.suite,
            tokenizer=built.tokenizer,
            monitor=built.monitor,
            **_checkpointing(config, out),
            resume=resume,
            from_checkpoint=spec.from_checkpoint,
            device=run_device(config),
            progress=spec.progress,
            after_task=after_task,
            observer=tracking,
            say=say,
            shard=shard_model if config.training.fsdp else None,
            mode=config.reference or "sequential",
        )
        record = _results_record(config, built, result, progress)
        record.interference = interference_results(tracker, config)
        record.shift = shift_results(config, built, reference[0], model)
        record.seconds = time.perf_counter() - begin
        own = as_chain(strategies).record_fields(model, config.training.lr, result.logs)
        record = RunRecord.model_validate({**record.to_json(), **to_jsonable(own)})
        tracking.finish(record)
    return _finish(spec, out, progress, say, record)


def _checkpointing(config: ExperimentConfig, out: Path) -> dict[str, Any]:
    """``fit_sequence``'s checkpoint arguments: ``out/checkpoints`` unless they are off."""
    on = config.checkpoints.enabled
    return {
        "checkpoint_dir": out / "checkpoints" if on else None,
        "checkpoint_every": config.checkpoints.every if on else 0,
    }


def _restored(task: str, steps: int, monitor: MonitorResult | None) -> str:
    """The line saying which earlier weights the monitor put back after ``task`` trained for
    ``steps`` ("" when none)."""
    if monitor is None or not monitor.restored or monitor.best_step in (None, steps):
        return ""
    if monitor.best_step == 0:
        return (
            f"  {task}: the starting weights were restored (no later evaluation was within the "
            "budget), so the task was not learned; raise monitor.max_degradation to let it learn"
        )
    return f"  {task}: the weights of step {monitor.best_step} were restored (best within budget)"


def _finish(
    spec: RunSpec,
    out: Path,
    progress: RunProgress,
    say: Callable[[str], None],
    results: RunRecord,
) -> RunRecord:
    """Say where the monitor stopped a task, then write ``results.json`` (then the report) from
    the main process; returns ``results``."""
    for log in results.run.logs:
        if log.stopped:
            say(f"  the monitor stopped {log.task} at step {log.steps}: {log.stop_reason}")
        restored = _restored(log.task, log.steps, log.monitor)
        if restored:
            say(restored)
    if not is_main_process():
        return results  # one process writes the run directory
    results.write(out / "results.json")
    progress.finish()
    if spec.report:
        _write_report(out)
    say(f"wrote {out / 'results.json'}" + (f" and {out / 'report.html'}" if spec.report else ""))
    return results


def _results_record(
    config: ExperimentConfig, built: Experiment, run: RunResult, progress: RunProgress
) -> RunRecord:
    """The fields of ``results.json`` that every run has; the strategies' own fields
    (``record_fields``) and the diagnostics are added by the caller."""
    budget = None
    if progress.budget is not None and config.budget is not None:
        budget = BudgetRecord(
            max_degradation=config.budget.max_degradation,
            history=[
                [BudgetEval.model_validate(e) for e in task] for task in progress.budget_history
            ],
        )
    return RunRecord(
        name=config.name,
        description=config.description,
        variant=config.variant_label,
        seed=config.seeds[0],
        model=config.model.name,
        score=Score(name=built.score_name, higher_is_better=built.higher_is_better),
        run=run,
        monitor=None
        if config.monitor is None
        else MonitorSettings.model_validate(config.monitor.model_dump()),
        budget=budget,
        drift=DriftRecord.model_validate(
            {"layers": progress.drift.layers, "after": progress.drift_after}
        ),
    )
