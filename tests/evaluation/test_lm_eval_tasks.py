"""The lm-evaluation-harness bridge: real lm-eval tasks (the shipped local YAMLs) through
``retain audit`` on a tiny model, against lm-eval's own ``simple_evaluate``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from retain.assets.datasets import load_dataset
from retain.cli import main
from retain.evaluation.lm_eval_tasks import lm_eval_suite

TEMPLATES = Path(__file__).parent / "lm_eval_tasks"
TASKS = ["retain_sentiment_mc", "retain_general_ppl"]
LIMIT = 12


@pytest.fixture(scope="module")
def include(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped task YAMLs with their data written from the offline datasets."""
    root = tmp_path_factory.mktemp("lm_eval")
    data, tasks = root / "data", root / "tasks"
    data.mkdir()
    tasks.mkdir()
    movies = load_dataset("movie_snippets")["test"].select(range(40))
    general = load_dataset("general_text")["test"].select(range(LIMIT + 4))
    with (data / "sentiment.jsonl").open("w", encoding="utf-8") as f:
        for row in movies:
            f.write(json.dumps({"text": row["text"], "label": row["label"]}) + "\n")
    with (data / "general.jsonl").open("w", encoding="utf-8") as f:
        for row in general:
            f.write(json.dumps({"text": row["text"][:1500]}) + "\n")
    for template in TEMPLATES.glob("*.yaml"):
        text = template.read_text(encoding="utf-8").replace("DATA_DIR", str(data))
        (tasks / template.name).write_text(text, encoding="utf-8")
    return tasks


def test_retain_audit_reports_lm_evals_own_figures(
    include: Path, tiny_lm_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    base, tuned = tiny_lm_dirs
    out = tmp_path / "audit"
    argv = ["audit", "--base", str(base), "--tuned", str(tuned), "--out", str(out)]
    argv += ["--suite", "lm-eval:" + ",".join(TASKS), "--lm-eval-include", str(include)]
    assert main([*argv, "--limit", str(LIMIT), "--device", "cpu"]) == 0
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    by_name = {c["name"]: c for c in saved["capabilities"]}
    assert list(by_name) == TASKS
    assert by_name["retain_sentiment_mc"]["metric"] == "acc"
    assert by_name["retain_sentiment_mc"]["higher_is_better"] is True
    assert by_name["retain_general_ppl"]["metric"] == "word_perplexity"
    assert by_name["retain_general_ppl"]["higher_is_better"] is False
    for side, folder in (("before", base), ("after", tuned)):
        theirs = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={folder},dtype=float32",
            tasks=TASKS,
            task_manager=TaskManager(include_path=str(include)),
            limit=LIMIT,
            bootstrap_iters=0,
            device="cpu",
            batch_size=8,
        )["results"]
        for task, metric in (
            ("retain_sentiment_mc", "acc"),
            ("retain_general_ppl", "word_perplexity"),
        ):
            expected = theirs[task][f"{metric},none"]
            assert by_name[task][side] == pytest.approx(expected, rel=1e-6, abs=1e-9), (task, side)
        bpb = by_name["retain_general_ppl"][f"details_{side}"]["bits_per_byte,none"]
        assert bpb == pytest.approx(theirs["retain_general_ppl"]["bits_per_byte,none"], rel=1e-6)
    # lm-eval's per-sample results give every capability its paired interval.
    for cap in saved["capabilities"]:
        assert cap["interval"]["examples"] == LIMIT
        assert cap["interval"]["low"] <= cap["relative_degradation"] <= cap["interval"]["high"]
    assert by_name["retain_sentiment_mc"]["interval"]["test"] == "mcnemar"
    assert "retain_general_ppl" in (out / "report.md").read_text(encoding="utf-8")


def test_per_sample_scores_recompute_lm_evals_figure(
    include: Path, tiny_lm_dirs: tuple[Path, Path]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, _ = tiny_lm_dirs
    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    suite = lm_eval_suite(TASKS, include=[include], limit=5)
    result = suite.evaluate(model, tokenizer)
    for name, score in result.scores.items():
        assert score.examples is not None
        assert len(score.examples) == 5
        assert score.examples.score == pytest.approx(score.score, rel=1e-9), name
        assert math.isfinite(score.score)


def test_a_config_suite_lists_lm_eval_tasks(include: Path) -> None:
    from retain.experiment.suite_build import _probes
    from retain.experiment.suite_config import ProbeSection

    section = ProbeSection(kind="lm_eval", tasks=TASKS, include=[str(include)], limit=3)
    probes = _probes(section, "suite.probes.0")
    assert [p.name for p in probes] == TASKS
    assert [p.limit for p in probes] == [3, 3]
    with pytest.raises(ValueError, match="needs tasks"):
        ProbeSection(kind="lm_eval")
    with pytest.raises(ValueError, match="drop dataset"):
        ProbeSection(kind="lm_eval", tasks=["x"], dataset="sms_spam")
    with pytest.raises(ValueError, match="needs a dataset"):
        ProbeSection(kind="perplexity")


def test_without_lm_eval_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from retain.errors import RetainError

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    with pytest.raises(RetainError, match=r"pip install 'retain\[lm-eval\]'"):
        lm_eval_suite(["arc_easy"])
