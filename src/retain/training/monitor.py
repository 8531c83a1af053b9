"""Live forgetting monitor: evaluate a capability suite during training, stop over budget, restore.

Every ``eval_every`` optimizer steps (and at the end of the task) the host calls
:meth:`ForgettingMonitor.check`, which evaluates an :class:`~retain.evaluation.suite.EvalSuite`
and compares each capability with the baseline (the model before the task) as in
:func:`retain.metrics.degradation`:

    degradation          = before - after   (higher is better)   or   after - before (lower is)
    relative_degradation = degradation / |before|        (0.05 = 5 % worse; positive = worse)

An evaluation is *within budget* when no capability's relative degradation exceeds
``max_degradation`` (a capability whose baseline is 0 is over budget as soon as it degrades at all,
as in :meth:`retain.metrics.Degradation.worsened`). After ``patience`` consecutive over-budget
evaluations the monitor says stop; :meth:`~ForgettingMonitor.finish` then restores the best
within-budget weights: the highest new-task score (``task_score``), or the latest one when no
``task_score`` is given. The starting weights (step 0, degradation 0) are the first candidate, so
the model never ends over budget when ``restore_best`` is on.

Evaluation does not disturb training: it runs in eval mode without gradients (the previous mode is
restored) and inside a forked RNG (torch CPU and the model's accelerator, Python's ``random`` and
NumPy's global state are restored), so a monitored run that never stops takes exactly the steps of
an unmonitored one.

Distributed runs: every rank evaluates (the suite sees the same weights everywhere), and each
evaluation's record is broadcast from rank 0, so the stop decision and the chosen best checkpoint
are identical on all ranks.

The best checkpoint is a full ``state_dict`` copy in CPU memory (one model's size); on a sharded
(FSDP2) model, each rank's copy of its own shards (the model's size over the world size), and
whether the weights changed since is decided over every rank (one all-reduce), so every rank
restores or none does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from retain.distributed import all_reduce_sum, from_main_process, is_sharded, local_tensor
from retain.errors import RetainError
from retain.evaluation.base import undisturbed
from retain.evaluation.suite import CapabilityChange, EvalSuite, SuiteResult
from retain.records.run import MonitorEval, MonitorResult

__all__ = ["Decision", "ForgettingMonitor", "MonitorConfig", "MonitorResult"]


@dataclass(frozen=True)
class MonitorConfig:
    """Settings of the forgetting monitor.

    Attributes:
        max_degradation: relative degradation budget per capability (0.05 = 5 % worse than the
            baseline allowed; 0 = no degradation at all).
        patience: consecutive over-budget evaluations before stopping (1 = at the first).
        eval_every: optimizer steps between evaluations (0 = only at the end of the task).
        restore_best: at the end, load the best within-budget weights back.
    """

    max_degradation: float = 0.05
    patience: int = 1
    eval_every: int = 10
    restore_best: bool = True

    def __post_init__(self) -> None:
        budget = self.max_degradation
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise RetainError(f"max_degradation must be a fraction such as 0.05; got {budget!r}")
        if not (0 <= budget < math.inf):
            raise RetainError(
                f"max_degradation must be >= 0 and finite (0.05 = 5 % worse allowed); got {budget}"
            )
        if isinstance(self.patience, bool) or not isinstance(self.patience, int):
            raise RetainError(f"patience must be an integer >= 1; got {self.patience!r}")
        if self.patience < 1:
            raise RetainError(f"patience must be >= 1 (1 = stop at the first); got {self.patience}")
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int):
            raise RetainError(f"eval_every must be an integer >= 0; got {self.eval_every!r}")
        if self.eval_every < 0:
            raise RetainError(
                f"eval_every must be >= 0 (0 = only at the end of the task); got {self.eval_every}"
            )


@dataclass(frozen=True)
class Decision:
    """The answer of one check: ``stop`` training or not, and why (one line)."""

    stop: bool
    reason: str = ""


class ForgettingMonitor:
    """Evaluates ``suite`` during training; stops when forgetting exceeds the budget.

    ``task_score(model)`` scores the new task (higher is better, e.g. held-out accuracy); it picks
    the best within-budget checkpoint (ties go to the later one). A baseline already stored in
    ``suite`` (e.g. the pretrained model's scores) is kept, so budgets across a task sequence refer
    to it; otherwise :meth:`start` stores the starting model's scores. Use one monitor per task.
    """

    def __init__(
        self,
        suite: EvalSuite,
        config: MonitorConfig | None = None,
        tokenizer: Any = None,
        task_score: Callable[[nn.Module], float] | None = None,
    ) -> None:
        if not suite.probes:
            raise RetainError(f"suite {suite.name!r} has no probes; add the capabilities to watch")
        self.suite = suite
        self.config = config or MonitorConfig()
        self.tokenizer = tokenizer
        self.task_score = task_score
        self.history: list[dict[str, Any]] = []
        self._streak = 0
        self._stop_reason = ""
        self._best: dict[str, torch.Tensor] | None = None
        self._best_entry: dict[str, Any] | None = None
        self._finished = False

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has run."""
        return bool(self.history)

    @property
    def latest(self) -> dict[str, Any] | None:
        """The latest evaluation record (None before :meth:`start`)."""
        return self.history[-1] if self.history else None

    def start(self, model: nn.Module) -> None:
        """Evaluate the starting model: the baseline (if the suite has none) and step 0."""
        if self._finished or self.started:
            raise RetainError("this ForgettingMonitor was already started; create one per task")
        result, score = self._evaluate(model)
        result = from_main_process(result)
        if self.suite.baseline is None:
            self.suite.set_baseline(result)
        self._record(model, 0, result, score)

    def check(self, model: nn.Module, step: int) -> Decision:
        """Evaluate ``model`` after optimizer ``step``; stop after ``patience`` over budget."""
        if not self.started or self._finished:
            raise RetainError("call ForgettingMonitor.start(model) before check(), once per task")
        result, score = self._evaluate(model)
        entry = self._record(model, step, result, score)
        if entry["within_budget"]:
            return Decision(False)
        if self._streak < self.config.patience:
            return Decision(False)
        self._stop_reason = (
            f"capability {entry['worst_capability']!r} degraded "
            f"{_pct(entry['worst_degradation'], self.config.max_degradation)} > budget "
            f"{_pct(self.config.max_degradation)} "
            f"for {self._streak} evaluation(s) at step {step}"
        )
        return Decision(True, self._stop_reason)

    def finish(self, model: nn.Module) -> MonitorResult:
        """Restore the best within-budget weights (when ``restore_best`` and they differ)."""
        if not self.started:
            raise RetainError("call ForgettingMonitor.start(model) before finish()")
        self._finished = True
        restored = False
        best = self._best
        if self.config.restore_best and best is not None and not _same_weights(model, best):
            _restore(model, best)
            restored = True
        final = self._best_entry if restored else self.history[-1]
        baseline = self.suite.baseline
        return MonitorResult(
            stopped=bool(self._stop_reason),
            reason=self._stop_reason or "completed",
            best_step=None if self._best_entry is None else int(self._best_entry["step"]),
            restored=restored,
            baseline={} if baseline is None else {n: s.score for n, s in baseline.scores.items()},
            history=[MonitorEval.model_validate(h) for h in self.history],
            final_worst_degradation=_undefined_is_nan(
                None if final is None else final["worst_degradation"]
            ),
        )

    def figures(self, prefix: str = "monitor/") -> dict[str, float]:
        """The latest record as flat numbers for a logger (undefined values left out)."""
        entry = self.latest
        if entry is None:
            return {}
        out: dict[str, float] = {f"{prefix}step": float(entry["step"])}
        for name, value in entry["degradation"].items():
            if value is not None:
                out[f"{prefix}{name}/degradation"] = float(value)
        for key in ("worst_degradation", "task_score"):
            if entry[key] is not None:
                out[f"{prefix}{key}"] = float(entry[key])
        out[f"{prefix}within_budget"] = float(entry["within_budget"])
        return out

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``(json, tensors)``: everything a resumed run needs (the suite's baseline included).

        ``tensors`` holds the best within-budget weights; :meth:`load_state` restores both.
        """
        baseline = self.suite.baseline
        meta = {
            "history": [dict(h) for h in self.history],
            "streak": self._streak,
            "stop_reason": self._stop_reason,
            "best_index": None
            if self._best_entry is None
            else self.history.index(self._best_entry),
            "baseline": None if baseline is None else baseline.to_dict(),
        }
        return meta, dict(self._best or {})

    def load_state(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Continue from :meth:`state` (on a fresh monitor for the same suite and task)."""
        if self.started:
            raise RetainError("load_state needs a fresh ForgettingMonitor (this one has started)")
        self.history = [dict(h) for h in meta["history"]]
        self._streak = int(meta["streak"])
        self._stop_reason = str(meta["stop_reason"])
        index = meta["best_index"]
        self._best_entry = None if index is None else self.history[int(index)]
        self._best = dict(tensors) if tensors else None
        if meta["baseline"] is not None:
            self.suite.set_baseline(SuiteResult.from_dict(meta["baseline"]))

    def _evaluate(self, model: nn.Module) -> tuple[SuiteResult, float | None]:
        with undisturbed(model):
            result = self.suite.evaluate(model, self.tokenizer)
            score = None if self.task_score is None else float(self.task_score(model))
        if score is not None and not math.isfinite(score):
            raise RetainError(f"task_score returned {score}; it must return a finite number")
        return result, score

    def _record(
        self, model: nn.Module, step: int, result: SuiteResult, score: float | None
    ) -> dict[str, Any]:
        changes = self.suite.compare(result)
        over = [c for c in changes if c.change.worsened(self.config.max_degradation)]
        worst = max(changes, key=_relative)
        entry: dict[str, Any] = {
            "step": int(step),
            "scores": {c.name: c.after.score for c in changes},
            "degradation": {c.name: _finite(_relative(c)) for c in changes},
            "worst_capability": worst.name,
            "worst_degradation": _finite(_relative(worst)),
            "task_score": score,
            "within_budget": not over,
        }
        entry = from_main_process(entry)  # identical records, hence decisions, on every rank
        self.history.append(entry)
        if not entry["within_budget"]:
            self._streak += 1
            return entry
        self._streak = 0
        best = self._best_entry
        if best is None or score is None or best["task_score"] is None:
            better = True
        else:
            better = entry["task_score"] >= best["task_score"]
        if better:
            self._best = {
                k: local_tensor(v).detach().to("cpu", copy=True)
                for k, v in model.state_dict().items()
            }
            self._best_entry = entry
        return entry


def _relative(change: CapabilityChange) -> float:
    """Relative degradation, +inf for any degradation from a zero baseline (0 if none)."""
    d = change.change
    if d.before == 0:
        return math.inf if d.degradation > 0 else 0.0
    return d.relative_degradation


def _undefined_is_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _finite(value: float) -> float | None:
    return value + 0.0 if math.isfinite(value) else None  # + 0.0 turns -0.0 into 0.0


def _pct(value: float | None, budget: float | None = None) -> str:
    """``value`` as a percentage, with two decimals where one would show it equal to ``budget``."""
    if value is None:
        return "an unbounded amount"
    if budget is not None and f"{value:.1%}" == f"{budget:.1%}":
        return f"{value:.2%}"
    return f"{value:.1%}"


def _same_weights(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    """Whether ``model`` still holds ``snapshot`` (this rank's shards of it when sharded; then
    the answer is every rank's, all-reduced)."""
    state = model.state_dict()
    same = state.keys() == snapshot.keys() and all(
        torch.equal(local_tensor(state[k]).detach().cpu(), v) for k, v in snapshot.items()
    )
    if not is_sharded(model):
        return same
    differs = all_reduce_sum(torch.tensor([0.0 if same else 1.0]))
    return float(differs.item()) == 0.0


def _restore(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """Load ``snapshot`` into ``model``: ``load_state_dict``, or each rank's shards in place."""
    if not is_sharded(model):
        model.load_state_dict(snapshot)
        return
    with torch.no_grad():
        for name, value in model.state_dict().items():
            local_tensor(value).copy_(snapshot[name])
