"""Train a sequence of tasks and record the score matrix the continual-learning metrics need.

:func:`fit_sequence` trains tasks ``0 .. T-1`` one after another with :func:`train_task` and,
after each task ``t``, scores *every* task's test data (seen and unseen), filling row ``t`` of
``R[t][i]``; the row scored before any training is the baseline ``b``. From ``R`` and ``b`` it
computes ACC, BWT, FWT (Lopez-Paz & Ranzato 2017) and average forgetting (Chaudhry et al. 2018)
with :mod:`retain.metrics`. With a capability ``suite`` it also scores the held-out capabilities
before training and after each task, and with ``monitor`` it watches them during every task
(:class:`~retain.training.monitor.ForgettingMonitor`, budgets relative to the model before the
first task). :class:`RunResult` keeps all of it (per-step losses and learning rates, monitor
histories, timings, the strategies, the resolved config, the seed and the library versions) and
saves it as strict JSON (``NaN`` -> ``null``).

Task kinds: a model with one head per task (task-incremental, e.g.
:class:`retain.data.task_heads.TaskHeads`) exposes ``use_task(name)``, which is called before a
task is trained or scored; a shared head (domain-incremental) needs nothing; causal-LM tasks use
the :class:`~retain.data.task.CausalLM` objective and a score such as minus the perplexity. Every
strategy's ``route`` hook is called too (``progressive`` switches to the task's adapter).

Checkpoints (``checkpoint_dir``): after every task (``tasks/step-<t>``) and every
``checkpoint_every`` optimizer steps (``steps/step-<global step>``), through
:mod:`retain.training.checkpoint` (safetensors, atomic). ``resume=True`` continues the newest
complete one, ``from_checkpoint=PATH`` exactly that one: it loads the checkpoint of the task's
start, calls ``begin_task`` exactly as the original run did, then loads the mid-task checkpoint
(weights, optimizer, scheduler, strategies, monitor and RNG), so on CPU with a fixed seed the
results equal an uninterrupted run's. Which checkpoint was chosen, and which incomplete ones were
skipped and why, is said through ``say`` and kept in :attr:`RunResult.resume_notes`; the rules
(no silent fresh start, the next older checkpoint named on a failed verification) are in
:mod:`retain.training.sequence_state`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from retain.data.permuted import TaskSplit
from retain.data.task import Task
from retain.data.task_heads import task_router
from retain.distributed import auto_device, init_distributed
from retain.errors import RetainError
from retain.evaluation.base import undisturbed
from retain.evaluation.suite import EvalSuite, SuiteResult
from retain.evaluation.task_accuracy import negative_loss, task_accuracy
from retain.evaluation.task_probe import TaskAccuracyProbe
from retain.records.parts import Interval
from retain.records.parts import Score as ScoreRecord
from retain.records.run import RunResult, SequenceMetrics, SuiteScores, TaskLog
from retain.strategies.base import Strategy
from retain.strategies.chain import Chain, as_chain
from retain.training.loop import TrainConfig, train_task
from retain.training.monitor import ForgettingMonitor, MonitorConfig
from retain.training.observer import SequenceObserver, TaskEndEvent, observed
from retain.training.references import (
    SequenceMode,
    StartWeights,
    check_mode,
    sequence_metrics,
    training_stages,
)
from retain.training.sequence_state import (
    RunState,
    TaskCheckpoints,
    load_start,
    log_dict,
    plan_resume,
    save_checkpoint_of,
)

__all__ = ["RunResult", "fit_sequence", "library_versions"]

_PACKAGES = ("retain", "torch", "transformers", "peft", "accelerate")
Score = Callable[[nn.Module, Task], float]


def library_versions() -> dict[str, str]:
    """Versions of retain, torch, transformers, peft and accelerate (``"not installed"``)."""
    found: dict[str, str] = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _check_splits(splits: Sequence[TaskSplit]) -> list[str]:
    if len(splits) == 0:
        raise RetainError("fit_sequence needs at least one task; pass a non-empty list of splits")
    names = [split.train.name for split in splits]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise RetainError(
                f"task name {name!r} appears twice in the sequence; give every task its own name"
            )
        seen.add(name)
    return names


def route(model: nn.Module, strategies: Chain, name: str) -> None:
    """Send ``model``'s forward through task ``name``: its head and per-task adapters."""
    strategies.route(model, name)
    router = task_router(model)
    if router is not None:
        router.use_task(name)


def fit_sequence(
    model: nn.Module,
    splits: Sequence[TaskSplit],
    strategies: Strategy | Sequence[Strategy] | None = None,
    config: TrainConfig | None = None,
    score: Score = task_accuracy,
    *,
    suite: EvalSuite | None = None,
    tokenizer: Any = None,
    monitor: MonitorConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    from_checkpoint: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    after_task: Callable[[int, nn.Module], None] | None = None,
    observer: SequenceObserver | None = None,
    say: Callable[[str], None] | None = None,
    shard: Callable[[nn.Module], nn.Module] | None = None,
    mode: SequenceMode = "sequential",
) -> tuple[nn.Module, RunResult]:
    """Train ``splits`` in order; returns the (possibly wrapped) model and a :class:`RunResult`.

    Seeds Python, NumPy and torch with ``config.seed``, moves the model to ``device`` (None:
    :func:`auto_device`), calls ``strategies.prepare(model)`` once, scores every test task (the
    baseline ``b``) and the ``suite``, then for each task ``t`` trains on ``splits[t].train`` with
    ``replace(config, seed=config.seed * 1000 + t)`` (its own data order) and scores every test
    task into row ``t`` of ``R`` and the suite. Metrics (higher score is better):
    ``ACC = mean_i R[T-1, i]``, ``BWT = mean_{i<T-1} (R[T-1, i] - R[i, i])``,
    ``FWT = mean_{i>=1} (R[i-1, i] - b[i])`` (Lopez-Paz & Ranzato, NeurIPS 2017) and average
    forgetting ``mean_{i<T-1} (max_{t<T-1} R[t, i] - R[T-1, i])`` (Chaudhry et al., ECCV 2018).

    ``monitor``: watch ``suite`` during each task (against the model before the sequence) and
    the held-out accuracy of every earlier task (against its accuracy when the task starts, probe
    ``task/<name>``); the new-task score for keeping the best checkpoint is ``score`` on the
    task's test data. ``checkpoint_dir``, ``checkpoint_every``, ``resume``: see the module
    docstring; a folder that already holds checkpoints is refused unless ``resume`` is set, and
    ``resume`` with no complete checkpoint in it is an error (not a fresh start).
    ``from_checkpoint``: resume from exactly this ``checkpoints/tasks/step-<n>`` or
    ``checkpoints/steps/step-<n>`` folder (``resume`` is then implied; later checkpoints still go to
    ``checkpoint_dir``). ``progress``: tqdm bars (None: on a terminal).
    ``after_task(t, model)``: called after task ``t`` is trained and scored, before its
    checkpoint (tasks finished before a resume are not called again). ``observer``: told of
    every optimizer step and every task's end, with the global step
    (:mod:`retain.training.observer`). ``say``: receives the one-line resume decision.
    ``shard``: applied to the prepared model before anything else touches it, e.g.
    :func:`retain.distributed.shard_model` (FSDP2 under ``torchrun``; every strategy of the chain
    must support sharding, and a sharded run's checkpoints resume at the same world size).
    ``mode``: ``"sequential"`` (the tasks in order), or a reference of a comparison,
    ``"joint"`` (all tasks' training data mixed, trained once) or ``"single"`` (each task from
    the starting weights alone), trained without strategies or monitor
    (:mod:`retain.training.references`: their matrices and metrics).
    """
    names = _check_splits(splits)
    config = config or TrainConfig()
    if checkpoint_every < 0:
        raise RetainError(f"checkpoint_every must be >= 0 steps, got {checkpoint_every}")
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    plan = plan_resume(folder, resume, None if from_checkpoint is None else Path(from_checkpoint))
    init_distributed()
    set_seed(config.seed)
    model.to(auto_device() if device is None else torch.device(device))
    strat = as_chain(strategies)
    check_mode(mode, strat, monitor, task_router(model) is not None)
    stages = training_stages(splits, mode, config.seed)
    model = strat.prepare(model)
    if shard is not None:
        model = shard(model)
    start_weights = StartWeights(model, mode)  # before a resume loads anything
    run, start_task, start = RunState(names), 0, plan.boundary
    if plan.boundary is not None:
        run, start_task = load_start(plan, model, strat)
        if say is not None:
            say(plan.note())
        if suite is not None and suite.baseline is None and run.suite_baseline is not None:
            suite.set_baseline(SuiteResult.from_dict(run.suite_baseline))
    else:
        _score_baseline(model, strat, splits, run, suite, tokenizer, score)
        start = save_checkpoint_of(folder, "tasks", model, strat, run.position(0, 0, None))
    disable = None if progress is None else not progress
    bar = tqdm(total=len(stages), initial=start_task, desc="tasks", unit="task", disable=disable)
    for t in range(start_task, len(stages)):
        stage = stages[t]
        route(model, strat, names[t])
        watch = _monitor(monitor, suite, tokenizer, score, splits, t, model)
        resume_mid = plan.mid if t == start_task else None
        start_weights.reset(model, t, resume_mid is not None)
        checkpoints = TaskCheckpoints(
            folder, checkpoint_every, model, strat, run, t, monitor=watch, start=start
        )
        steps_before = sum(x["steps"] for x in run.logs)
        hooks = checkpoints.hooks(resume_from=resume_mid)
        hooks = observed(hooks, observer, t, steps_before, watch)
        begin = time.perf_counter()
        log = train_task(
            model,
            stage,
            strat,
            replace(config, seed=config.seed * 1000 + t),
            watch,
            progress=progress,
            hooks=hooks,
        )
        run.seconds[f"train/{stage.name}"] = run.seconds.get(f"train/{stage.name}", 0.0) + (
            time.perf_counter() - begin
        )
        run.logs.append(log_dict(log))
        if mode == "joint":  # rows 0 .. T-2 were never trained to: not measured
            run.matrix.extend([[math.nan] * len(names) for _ in names[1:]])
        run.matrix.append(_score_all(model, strat, splits, names, t, score, run, stage.name))
        if suite is not None:
            run.suite_after.append(_evaluate_suite(model, suite, tokenizer))
        if observer is not None:
            row = dict(zip(names, run.matrix[-1], strict=True))
            history = [] if watch is None else watch.history
            observer.on_task_end(TaskEndEvent(t, steps_before + log.steps, log, row, history))
        if after_task is not None:
            after_task(t, model)
        start = save_checkpoint_of(folder, "tasks", model, strat, run.position(t + 1, 0, None))
        bar.update(1)
    bar.close()
    return model, _result(run, strat, config, suite, score, mode)


def _score_baseline(
    model: nn.Module,
    strat: Chain,
    splits: Sequence[TaskSplit],
    run: RunState,
    suite: EvalSuite | None,
    tokenizer: Any,
    score: Score,
) -> None:
    run.baseline = _score_all(model, strat, splits, run.names, 0, score, run, "baseline")
    if suite is not None:
        if suite.baseline is None:
            suite.set_baseline(suite.evaluate(model, tokenizer))
        run.suite_baseline = suite.baseline.to_dict() if suite.baseline is not None else None


def _score_all(
    model: nn.Module,
    strat: Chain,
    splits: Sequence[TaskSplit],
    names: list[str],
    current: int,
    score: Score,
    run: RunState,
    label: str,
) -> list[float]:
    begin = time.perf_counter()
    row = []
    for i, split in enumerate(splits):
        route(model, strat, names[i])
        row.append(float(score(model, split.test)))
    route(model, strat, names[current])
    run.seconds[f"eval/{label}"] = time.perf_counter() - begin
    return row


def _evaluate_suite(model: nn.Module, suite: EvalSuite, tokenizer: Any) -> dict[str, Any]:
    with undisturbed(model):
        return suite.evaluate(model, tokenizer).to_dict()


def _monitor(
    config: MonitorConfig | None,
    suite: EvalSuite | None,
    tokenizer: Any,
    score: Score,
    splits: Sequence[TaskSplit],
    t: int,
    model: nn.Module,
) -> ForgettingMonitor | None:
    """Task ``t``'s monitor: ``suite`` (against its baseline, the model before the sequence) plus
    the held-out accuracy of every earlier task (against its accuracy when task ``t`` starts)."""
    if config is None:
        return None
    earlier = [TaskAccuracyProbe(f"task/{s.train.name}", s.test) for s in splits[:t]]
    probes = [] if suite is None else suite.probes
    if not probes and not earlier:
        return None  # the first task without a suite: nothing to watch yet
    watched = EvalSuite("monitor", [*probes, *earlier])
    if suite is None or suite.baseline is not None:
        scores = {} if suite is None or suite.baseline is None else dict(suite.baseline.scores)
        if earlier:
            with undisturbed(model):
                scores.update(EvalSuite("earlier", earlier).evaluate(model, tokenizer).scores)
        watched.set_baseline(SuiteResult(watched.name, scores))
    test = splits[t].test
    return ForgettingMonitor(watched, config, tokenizer, task_score=lambda m: score(m, test))


#: The names of the scores retain ships (as the experiment runner reports them).
_SCORE_NAMES: dict[Score, str] = {
    task_accuracy: "accuracy",
    negative_loss: "negative loss (nats/token)",
}


def _score_record(score: Score) -> ScoreRecord:
    """What ``score`` measures: a shipped score's name, else the function's (higher is better,
    as every score of :func:`fit_sequence` is)."""
    name = _SCORE_NAMES.get(score) or str(getattr(score, "__name__", "score"))
    return ScoreRecord(name=name, higher_is_better=True)


def _result(
    run: RunState,
    strat: Chain,
    config: TrainConfig,
    suite: EvalSuite | None,
    score: Score,
    mode: SequenceMode,
) -> RunResult:
    matrix = run.matrix
    metrics = sequence_metrics(matrix, run.baseline, mode)
    return RunResult(
        mode=mode,
        tasks=run.names,
        matrix=matrix,
        baseline=run.baseline,
        metrics=SequenceMetrics(**metrics),
        logs=[TaskLog.model_validate(log) for log in run.logs],
        strategies=strat.describe(),
        config=asdict(config),
        seed=config.seed,
        suite=_suite_summary(run, suite),
        versions=library_versions(),
        seconds=run.seconds,
        resumed=run.resumed,
        resume_notes=run.resume_notes,
        score=_score_record(score),
    )


def _suite_summary(run: RunState, suite: EvalSuite | None) -> SuiteScores | None:
    if suite is None or run.suite_baseline is None:
        return None
    before = SuiteResult.from_dict(run.suite_baseline)
    after = [SuiteResult.from_dict(a) for a in run.suite_after]
    changes = [suite.compare(a, before) for a in after]
    return SuiteScores(
        name=suite.name,
        baseline={n: s.score for n, s in before.scores.items()},
        after=[{n: s.score for n, s in a.scores.items()} for a in after],
        relative_degradation=[
            {c.name: c.change.relative_degradation for c in cs} for cs in changes
        ],
        intervals=[{c.name: Interval.of(c.paired) for c in cs} for cs in changes],
    )
