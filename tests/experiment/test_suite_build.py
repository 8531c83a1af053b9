"""Probes listed in a config (``suite.probes``) build the same probes as the Python API, with
the same demonstrations and prompts, and refuse bad settings with one line naming the entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from retain.assets.datasets import load_dataset
from retain.errors import RetainError
from retain.evaluation.few_shot import FewShotClassification
from retain.evaluation.generation import GenerationQuality
from retain.evaluation.suites import subset
from retain.experiment.config import config_from_dict
from retain.experiment.suite_build import build_suite


def _config(*probes: dict[str, Any], kind: str = "causal-lm") -> Any:
    return config_from_dict(
        {
            "name": "probes",
            "model": {"name": "smollm2-135m", "kind": kind},
            "tasks": [{"dataset": "sms_spam"}],
            "suite": {"probes": list(probes)},
        }
    )


def test_a_few_shot_probe_from_the_config_is_the_python_probe() -> None:
    entry = {"kind": "few_shot", "dataset": "rotten_tomatoes", "n": 40, "k": 6}
    suite = build_suite(_config({**entry, "template": "Review: {text}\nSentiment:"}))
    assert suite is not None
    (probe,) = suite.probes
    assert isinstance(probe, FewShotClassification)
    assert probe.name == "rotten_tomatoes_few_shot"
    data = load_dataset("rotten_tomatoes")
    train, test = subset(data["train"], 40), subset(data["test"], 20)
    by_hand = FewShotClassification(
        "x",
        train["text"],
        train["label"],
        test["text"],
        test["label"],
        [" rotten", " fresh"],  # the dataset's label names, each after a space
        k=6,
        template="Review: {text}\nSentiment:",
    )
    assert probe.label_words == by_hand.label_words
    assert list(probe.chosen) == list(by_hand.chosen)
    assert probe.template == by_hand.template
    assert probe.texts == by_hand.texts


def test_a_generation_probe_keeps_the_first_words_as_prompts() -> None:
    entry = {"kind": "generation", "dataset": "general_text", "n": 5, "prompt_words": 7}
    suite = build_suite(_config({**entry, "max_new_tokens": 12, "name": "cont"}))
    assert suite is not None
    (probe,) = suite.probes
    assert isinstance(probe, GenerationQuality)
    texts = subset(load_dataset("general_text")["test"], 5)["text"]
    assert probe.prompts == [" ".join(t.split()[:7]) for t in texts]
    assert (probe.name, probe.max_new_tokens) == ("cont", 12)


@pytest.mark.parametrize(
    ("entry", "kind", "expected"),
    [
        (
            {"kind": "few_shot", "dataset": "rotten_tomatoes", "n": 4, "k": 9},
            "causal-lm",
            r"suite.probes.0: probe 'rotten_tomatoes_few_shot': few-shot k=9 is larger than "
            r"the train split \(4 examples\); lower k",
        ),
        (
            {"kind": "few_shot", "dataset": "rotten_tomatoes", "label_words": [" a"]},
            "causal-lm",
            r"suite.probes.0: 1 label_words for 2 classes",
        ),
        (
            {"kind": "generation", "dataset": "general_text"},
            "task-heads",
            r"suite.probes.0: a generation probe needs a causal-lm model, not 'task-heads'",
        ),
    ],
)
def test_bad_probe_settings_name_the_entry(entry: dict[str, Any], kind: str, expected: str) -> None:
    with pytest.raises(RetainError, match=expected):
        build_suite(_config(entry, kind=kind))


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"kind": "fewshot", "dataset": "x"}, "unknown value 'fewshot'; did you mean 'few_shot'?"),
        ({"kind": "knn", "dataset": "x", "k": 3}, "k is for kind: few_shot, not knn"),
        ({"kind": "few_shot", "dataset": "x", "template": "no"}, r"template needs \{text\}"),
        ({"kind": "perplexity", "dataset": "x", "tasks": ["a"]}, "tasks is for kind: lm_eval"),
    ],
)
def test_probe_sections_refuse_settings_of_another_kind(
    entry: dict[str, Any], expected: str
) -> None:
    with pytest.raises(RetainError, match=rf"config: suite.probes.0(.kind)?: {expected}"):
        _config(entry)


def test_a_few_shot_probe_needs_labels(tmp_path: Path) -> None:
    (tmp_path / "plain.txt").write_text("".join(f"line number {i}\n" for i in range(40)))
    entry = {"kind": "few_shot", "dataset": str(tmp_path / "plain.txt")}
    with pytest.raises(RetainError, match=r"suite.probes.0: dataset '.*plain.txt' has no column"):
        build_suite(_config(entry))


def test_a_local_file_probe_reads_its_own_columns(tmp_path: Path) -> None:
    rows = "".join(
        f'{{"review": "film {i} was {w}", "stars": "{w}"}}\n'
        for i in range(20)
        for w in ("bad", "good")
    )
    (tmp_path / "r.jsonl").write_text(rows)
    entry = {
        "kind": "few_shot",
        "dataset": str(tmp_path / "r.jsonl"),
        "text_column": "review",
        "label_column": "stars",
        "n": 16,
        "k": 2,
    }
    suite = build_suite(_config(entry))
    assert suite is not None
    (probe,) = suite.probes
    assert probe.label_words == [" bad", " good"]
    assert len(probe.chosen) == 2


def test_a_dumped_probe_with_every_default_spelled_out_reads_back() -> None:
    from retain.experiment.suite_config import ProbeSection

    probe = ProbeSection.model_validate({"kind": "perplexity", "dataset": "general_text", "n": 16})
    again = ProbeSection.model_validate(probe.model_dump(mode="json"))  # k, include, ... as default
    assert again == probe
