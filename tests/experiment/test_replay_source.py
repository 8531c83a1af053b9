"""A replay source of general text from YAML (``replay: {source: {...}}``): built from the
dataset's rows, never sharing a text with the suite's perplexity probe, causal LMs only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from retain.errors import RetainError
from retain.experiment.build import build_experiment, build_strategies
from retain.experiment.config import config_from_dict
from retain.strategies.replay import Replay

pytestmark = pytest.mark.slow


def config(source: dict[str, Any], kind: str = "causal-lm") -> Any:
    model = {"name": "smollm2-135m", "kind": kind}
    if kind == "mlp":
        model = {"name": "mlp", "kind": "mlp"}
    data = {
        "name": "replay-source",
        "model": model,
        "tasks": [{"dataset": "sms_spam", "train": 8, "test": 4, "max_length": 32}],
        "suite": {"probes": [{"kind": "perplexity", "dataset": "general_text", "n": 4}]},
        "strategies": [{"name": "replay", "ratio": 0.5, "source": source}],
    }
    if kind == "mlp":
        data["tasks"] = [{"dataset": "digits", "train": 8, "test": 4}]
        del data["suite"]
    return config_from_dict(data)


def test_general_text_is_replayed_without_the_texts_the_suite_scores(tmp_path: Path) -> None:
    # the probe scores a seeded sample of 4 general_text rows; row 381 is among the first 400
    cfg = config({"dataset": "general_text", "split": "test", "n": 400, "max_length": 32})
    built = build_experiment(cfg)
    with pytest.warns(UserWarning, match="1 of 400 texts dropped"):
        (replay,) = build_strategies(cfg.strategies, cfg, built.suite, built.tokenizer)
    assert isinstance(replay, Replay)
    assert replay.source is not None
    assert len(replay.source.examples) == 399
    probe_texts = set(built.suite.probes[0].texts)  # type: ignore[union-attr, attr-defined]
    assert probe_texts.isdisjoint(replay.source.texts or [])
    skipped = config({"dataset": "general_text", "split": "test", "skip": 382, "n": 10})
    (clean,) = build_strategies(skipped.strategies, skipped, built.suite, built.tokenizer)
    assert len(clean.source.examples) == 10  # type: ignore[attr-defined]


def test_a_replay_source_is_refused_with_one_line_when_it_cannot_work() -> None:
    cfg = config({"dataset": "general_text", "n": 0})
    with pytest.raises(RetainError, match=r"strategies.0.source.n: Input should be greater"):
        build_strategies(cfg.strategies, cfg, None, None)
    cfg = config({"dataset": "general_text"}, kind="mlp")
    with pytest.raises(RetainError, match="replays text for a causal LM"):
        build_strategies(cfg.strategies, cfg, None, None)
    cfg = config({"dataset": "general_text", "split": "test"})
    assert build_strategies(cfg.strategies, cfg, None, None)[0].name == "replay"  # checked only
