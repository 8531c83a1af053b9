"""``retain diagnose`` frees the tuned model before the gradient diagnostics (issue 17: its peak
memory is about the two models plus a bounded working set, not two models plus two Fishers)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import pytest
from torch import Tensor, nn

import retain.experiment.diagnose as diagnose
from retain.assets.models import LoadedModel
from retain.experiment.diagnose import DiagnoseConfig, run_diagnose


def test_the_tuned_model_is_freed_before_the_fisher(
    tiny_lm_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, tuned = tiny_lm_dirs
    loaded: list[weakref.ref[nn.Module]] = []
    alive_at_fisher: list[bool] = []
    real_load, real_fisher = diagnose.load_model, diagnose.estimate_fisher

    def load(name: str, **kwargs: Any) -> LoadedModel:
        model = real_load(name, **kwargs)
        loaded.append(weakref.ref(model.model))
        return model

    def fisher(model: nn.Module, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        gc.collect()
        alive_at_fisher.append(loaded[1]() is not None)
        return real_fisher(model, *args, **kwargs)

    monkeypatch.setattr(diagnose, "load_model", load)
    monkeypatch.setattr(diagnose, "estimate_fisher", fisher)
    config = DiagnoseConfig(
        base=str(base),
        tuned=str(tuned),
        data="sms_spam",
        only=("output", "importance"),
        samples=2,
        fisher_samples=2,
        batch_size=2,
        max_length=16,
    )
    record = run_diagnose(config)
    assert alive_at_fisher == [False, False]  # general text and new task
    assert record.tuned.parameters == record.base.parameters  # described before it was freed
    assert record.output is not None
    assert record.importance is not None
