"""What a run records after each task, kept on disk until its results are written.

``progress.json`` in a run directory holds, for the tasks finished so far::

    {"drift": [[drift of each layer after task 0], ...],          # LayerDrift.measure, per task
     "budget": [[budget history records of task 0], ...]}         # ForgettingBudget.history

so that a resumed run reports the figures of the tasks it finished before it was stopped. The
file is written atomically by the main process after each task and removed once ``results.json``
exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from retain.atomic_files import write_json
from retain.distributed import is_main_process
from retain.errors import RetainError
from retain.experiment.layer_drift import LayerDrift
from retain.training.budget import ForgettingBudget

__all__ = ["RunProgress"]


@dataclass
class RunProgress:
    """Per-task drift and budget history of a run, mirrored in ``path`` (``progress.json``)."""

    path: Path
    drift: LayerDrift
    budget: ForgettingBudget | None = None
    #: ``drift_after[t]``: each layer's drift after task ``t``.
    drift_after: list[list[float | None]] = field(default_factory=list)
    #: ``budget_history[t]``: the budget's history records made during task ``t``.
    budget_history: list[list[dict[str, Any]]] = field(default_factory=list)
    _seen: int = 0

    @classmethod
    def start(
        cls, path: Path, model: nn.Module, budget: ForgettingBudget | None, resume: bool
    ) -> RunProgress:
        """Measure drift from ``model``'s weights now; on a resume, read what ``path`` holds."""
        progress = cls(path, LayerDrift(model), budget)
        if resume and path.is_file():
            try:
                done = json.loads(path.read_text(encoding="utf-8"))
                progress.drift_after = list(done["drift"])
                progress.budget_history = list(done["budget"])
            except (OSError, ValueError, KeyError, TypeError):
                raise RetainError(
                    f"{str(path)!r} is unreadable or corrupt; pass --overwrite to start afresh"
                ) from None
        # a resumed budget restores its history: records before this count are earlier tasks'
        progress._seen = sum(len(h) for h in progress.budget_history)
        return progress

    def task_done(self, t: int, model: nn.Module) -> None:
        """Record task ``t``'s figures (replacing any recorded before a resume) and save them."""
        self.drift_after = [*self.drift_after[:t], self.drift.measure(model)]
        if self.budget is not None:
            history = self.budget.history
            self.budget_history = [*self.budget_history[:t], list(history[self._seen :])]
            self._seen = len(history)
        if is_main_process():
            write_json(self.path, {"drift": self.drift_after, "budget": self.budget_history})

    def finish(self) -> None:
        """Remove the file (the results now hold everything)."""
        self.path.unlink(missing_ok=True)
