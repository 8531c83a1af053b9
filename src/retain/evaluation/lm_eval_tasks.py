"""lm-evaluation-harness tasks as retain capabilities, run on the model retain already holds.

Each lm-eval task becomes one probe (:class:`LmEvalTask`) whose score is the task's main metric
(the first of its ``metric_list``, or of its default metrics) with the direction lm-eval declares
(``higher_is_better``). The task runs through lm-eval's own registry, prompts and metrics
(``lm_eval.simple_evaluate``) on an ``HFLM`` that wraps the loaded model and tokenizer, so
nothing is reloaded from disk per probe and the figure is lm-eval's. lm-eval's per-sample results
become the probe's :class:`~retain.paired_statistics.ExampleScores` (documents in ``doc_id``
order, so the two models of an audit are paired):

* a metric aggregated by ``mean`` (``acc``, ``acc_norm``, ``exact_match`` ...): its per-document
  values;
* ``weighted_perplexity`` (``word_perplexity``, ``byte_perplexity``): per document ``-loglik`` and
  its word or byte count, ``exp(Σ −ll / Σ n)``;
* ``bits_per_byte``: per document ``−ll / ln 2`` and its bytes.

Any other aggregation (corpus BLEU, F1 ...) gives the score without examples, hence no interval.

Task data comes from wherever lm-eval finds it (the hub, the datasets cache); a folder of task
YAMLs (``include``) adds the user's own, for example tasks over local JSON files
(``dataset_path: json``, ``dataset_kwargs: {data_files: {test: /path/test.jsonl}}``). Tasks are
loaded when the suite is built, before any model, so a misspelt task or data that cannot be
loaded offline fails in seconds.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retain.errors import RetainError
from retain.evaluation.base import ProbeResult, model_device
from retain.evaluation.suite import EvalSuite
from retain.paired_statistics import ExampleScores

__all__ = ["LmEvalSource", "LmEvalTask", "lm_eval_suite", "parse_lm_eval_suite"]

_INSTALL = "pip install 'retain[lm-eval]' (lm-eval 0.4)"
#: The prefix of a suite given as lm-eval tasks on the command line.
PREFIX = "lm-eval:"


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise RetainError(f"lm-eval tasks need the lm-eval package: {_INSTALL}") from None
    return lm_eval


def parse_lm_eval_suite(spec: str) -> list[str] | None:
    """The task names of a suite spec ``lm-eval:arc_easy,hellaswag`` (None for another suite).

    >>> parse_lm_eval_suite("lm-eval:arc_easy, hellaswag"), parse_lm_eval_suite("general")
    (['arc_easy', 'hellaswag'], None)
    """
    if not spec.startswith(PREFIX):
        return None
    names = [n.strip() for n in spec[len(PREFIX) :].split(",") if n.strip()]
    if not names:
        raise RetainError("lm-eval: names no task; write lm-eval:arc_easy,hellaswag")
    if len(set(names)) < len(names):
        raise RetainError(f"{spec!r} lists a task twice; list each once")
    return names


class LmEvalSource:
    """lm-eval's task registry (``TaskManager``), with ``include`` folders of task YAMLs."""

    def __init__(self, include: Sequence[str | Path] = ()) -> None:
        self.include = [Path(p) for p in include]
        for folder in self.include:
            if not folder.is_dir():
                raise RetainError(
                    f"--lm-eval-include {str(folder)!r} is not a folder; point it at a folder "
                    "of lm-eval task YAMLs"
                )
        _lm_eval()  # a missing package is one line naming the extra
        from lm_eval.tasks import TaskManager

        paths = [str(p.resolve()) for p in self.include]
        self.manager = TaskManager(include_path=paths or None)

    def load(self, names: Sequence[str]) -> list[tuple[str, Any]]:
        """``(name, lm-eval Task)`` for every task in ``names`` (a group gives its subtasks), its
        data loaded; an unknown name or unloadable data is a one-line RetainError."""
        known = set(self.manager.all_tasks)
        for name in names:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                where = " or add its YAML with --lm-eval-include" if not self.include else ""
                raise RetainError(
                    f"lm-eval has no task {name!r}{hint} (list them: lm-eval ls tasks{where})"
                )
        from lm_eval.tasks import get_task_dict

        try:
            tasks = get_task_dict(list(names), self.manager)
        except Exception as exc:  # lm-eval and datasets raise many kinds: name them all
            text = " ".join(str(exc).split())[:200]
            raise RetainError(
                f"lm-eval tasks {', '.join(names)}: the data cannot be loaded "
                f"({type(exc).__name__}: {text}); offline, fill the datasets cache or point "
                "--lm-eval-include at task YAMLs over local files"
            ) from None
        order = {name: k for k, name in enumerate(names)}
        return sorted(_leaves(tasks), key=lambda item: order.get(item[0], len(order)))


def _leaves(tasks: dict[Any, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in tasks.items():
        if isinstance(value, dict):
            out += _leaves(value)
        else:
            out.append((str(getattr(key, "group_name", key)), value))
    return out


def _main_metric(task: Any) -> tuple[str, bool, str]:
    """``(metric, higher_is_better, aggregation name)`` of the task's main metric."""
    listed = [m["metric"] for m in (task.config.metric_list or []) if isinstance(m, dict)]
    directions: dict[str, bool] = task.higher_is_better()
    metric = next((m for m in listed if m in directions), None) or next(iter(directions))
    aggregation = task.aggregation().get(metric)
    return str(metric), bool(directions[metric]), getattr(aggregation, "__name__", "")


class LmEvalTask:
    """One lm-eval task as a probe (see the module docstring).

    ``details`` carry every metric lm-eval reported for the task (``"acc,none"`` ...), the
    documents scored (``n``), ``num_fewshot`` and ``limit``.
    """

    def __init__(
        self,
        name: str,
        task: Any,
        source: LmEvalSource,
        *,
        num_fewshot: int | None = None,
        limit: int | None = None,
        batch_size: int = 8,
    ) -> None:
        self.name = name
        self.task = task
        self.source = source
        self.num_fewshot = num_fewshot
        self.limit = limit
        self.batch_size = batch_size
        self.metric, self.higher_is_better, self._aggregation = _main_metric(task)

    def __repr__(self) -> str:
        return f"LmEvalTask({self.name!r}, metric={self.metric!r})"

    def evaluate(self, model: torch.nn.Module, tokenizer: Any) -> ProbeResult:
        """Run the task with lm-eval on ``model`` and ``tokenizer`` (already loaded)."""
        lm_eval = _lm_eval()
        from lm_eval.models.huggingface import HFLM

        if tokenizer is None:
            raise RetainError(f"lm-eval task {self.name!r} needs the model's tokenizer")
        was_training = model.training
        lm = HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=self.batch_size,
            device=str(model_device(model)),
        )
        try:
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=[self.task],
                num_fewshot=self.num_fewshot,
                limit=self.limit,
                log_samples=True,
                bootstrap_iters=0,
                task_manager=self.source.manager,
            )
        finally:
            model.train(was_training)
        return self._result(out)

    def _result(self, out: dict[str, Any]) -> ProbeResult:
        figures = out["results"][self.name]
        key = next((k for k in figures if k.startswith(f"{self.metric},")), None)
        if key is None:
            raise RetainError(f"lm-eval reported no {self.metric!r} for task {self.name!r}")
        score = float(figures[key])
        wanted = key.split(",", 1)[1]
        samples = sorted(
            (s for s in out["samples"][self.name] if s.get("filter", "none") == wanted),
            key=lambda s: int(s["doc_id"]),
        )
        details: dict[str, Any] = {
            k: v for k, v in figures.items() if isinstance(v, (int, float)) and k != "sample_len"
        }
        details.update(n=len(samples), num_fewshot=self.num_fewshot, limit=self.limit)
        return ProbeResult(score, details, self._examples(samples))

    def _examples(self, samples: list[dict[str, Any]]) -> ExampleScores | None:
        values = [s[self.metric] for s in samples]
        if not values:
            return None
        if self._aggregation == "mean":
            return ExampleScores(np.asarray(values, dtype=float))
        if self._aggregation in ("weighted_perplexity", "bits_per_byte"):
            pairs = np.asarray(values, dtype=float)  # (loglikelihood, words or bytes)
            if self._aggregation == "bits_per_byte":
                return ExampleScores(-pairs[:, 0] / math.log(2), pairs[:, 1], "ratio")
            return ExampleScores(-pairs[:, 0], pairs[:, 1], "perplexity")
        return None


def lm_eval_suite(
    names: Sequence[str],
    *,
    include: Sequence[str | Path] = (),
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
) -> EvalSuite:
    """A suite of lm-eval tasks, their data loaded now (errors before any model loads)."""
    if limit is not None and limit < 1:
        raise RetainError(f"--limit must be at least 1 document per task, got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise RetainError(f"--num-fewshot must be 0 or more, got {num_fewshot}")
    source = LmEvalSource(include)
    probes = [
        LmEvalTask(name, task, source, num_fewshot=num_fewshot, limit=limit, batch_size=batch_size)
        for name, task in source.load(names)
    ]
    text = ", ".join(names)
    return EvalSuite("lm-eval", probes, f"lm-evaluation-harness tasks: {text}")
