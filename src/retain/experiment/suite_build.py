"""The capability suite of an experiment config: a built-in suite (checked against the model's
kind) or the probes of ``suite.probes``, each built from its dataset with one-line errors that
name the entry (``suite.probes.<k>: ...``)."""

from __future__ import annotations

from typing import Any

from retain.errors import RetainError
from retain.evaluation.suite import EvalSuite
from retain.experiment.config import ExperimentConfig
from retain.experiment.dataset_rows import require_columns, rows_of
from retain.experiment.suite_config import ProbeSection

__all__ = ["build_suite"]

#: The model kinds each probe kind scores (``mlp`` takes none: it has no text).
_MODEL_KINDS = {
    "perplexity": ("causal-lm",),
    "few_shot": ("causal-lm",),
    "generation": ("causal-lm",),
    "lm_eval": ("causal-lm",),
    "linear": ("task-heads", "classifier", "causal-lm"),
    "knn": ("task-heads", "classifier", "causal-lm"),
}


def build_suite(config: ExperimentConfig) -> EvalSuite | None:
    """The config's suite: ``suite.name`` from the registry, or one probe per ``suite.probes``
    entry (an ``lm_eval`` entry gives one per task); None without a ``suite`` section."""
    from retain.evaluation.suites import SUITES

    section = config.suite
    if section is None:
        return None
    if section.name is not None:
        factory = SUITES.get(section.name)
        wanted = "causal-lm" if factory.model_kind == "causal-lm" else "encoder"
        have = "causal-lm" if config.model.kind == "causal-lm" else "encoder"
        if wanted != have or config.model.kind == "mlp":
            raise RetainError(
                f"suite {section.name!r} is for {wanted} models, but model.kind is "
                f"{config.model.kind!r}; pick another suite or list probes"
            )
        return factory.build(section.size)
    probes: list[Any] = []
    for k, p in enumerate(section.probes):
        where = f"suite.probes.{k}"
        if config.model.kind not in _MODEL_KINDS[p.kind]:
            fits = " or ".join(_MODEL_KINDS[p.kind])
            raise RetainError(
                f"{where}: a {p.kind} probe needs a {fits} model, not {config.model.kind!r}"
            )
        try:
            probes += _probes(p, where)
        except RetainError as error:
            text = str(error)
            raise RetainError(text if text.startswith(where) else f"{where}: {text}") from None
    return EvalSuite("custom", probes, "probes listed in the experiment config")


def _probes(probe: ProbeSection, where: str) -> list[Any]:
    if probe.kind == "lm_eval":
        from retain.evaluation.lm_eval_tasks import lm_eval_suite

        suite = lm_eval_suite(
            probe.tasks, include=probe.include, num_fewshot=probe.num_fewshot, limit=probe.limit
        )
        return list(suite.probes)
    from retain.assets.datasets import load_dataset

    assert probe.dataset is not None  # the section's validator requires it
    data = load_dataset(  # a local file is split like a task's: 20 % held out as its test rows
        probe.dataset,
        text_column=probe.text_column,
        label_column=probe.label_column,
        test_size=0.2,
    )
    build = {
        "perplexity": _perplexity,
        "generation": _generation,
        "few_shot": _few_shot,
        "linear": _representation,
        "knn": _representation,
    }[probe.kind]
    return [build(probe, data, where)]


def _perplexity(probe: ProbeSection, data: Any, where: str) -> Any:
    from retain.evaluation.perplexity import Perplexity
    from retain.evaluation.suites import subset

    rows = subset(rows_of(data, probe.split, None, where), probe.n)
    require_columns(rows, ["text"], where, str(probe.dataset))
    return Perplexity(probe.label, rows["text"], max_length=probe.max_length)


def _generation(probe: ProbeSection, data: Any, where: str) -> Any:
    from retain.evaluation.generation import GenerationQuality
    from retain.evaluation.suites import subset

    rows = subset(rows_of(data, probe.split, None, where), probe.n)
    require_columns(rows, ["text"], where, str(probe.dataset))
    prompts = [" ".join(text.split()[: probe.prompt_words]) for text in rows["text"]]
    return GenerationQuality(probe.label, prompts, max_new_tokens=probe.max_new_tokens)


def _labelled(probe: ProbeSection, data: Any, where: str) -> tuple[Any, Any]:
    """``n`` train rows and ``n // 2`` test rows (at least 2), both with text and labels."""
    from retain.evaluation.suites import subset

    train = subset(rows_of(data, "train", None, where), probe.n)
    test = subset(rows_of(data, probe.split, None, where), max(2, probe.n // 2))
    for rows in (train, test):
        require_columns(rows, ["text", "label"], where, str(probe.dataset))
    return train, test


def _representation(probe: ProbeSection, data: Any, where: str) -> Any:
    from retain.evaluation.representation import KNNProbe, LinearProbe

    train, test = _labelled(probe, data, where)
    cls = KNNProbe if probe.kind == "knn" else LinearProbe
    return cls(probe.label, train["text"], train["label"], test["text"], test["label"])


def _few_shot(probe: ProbeSection, data: Any, where: str) -> Any:
    from retain.evaluation.few_shot import FewShotClassification

    train, test = _labelled(probe, data, where)
    feature = train.features["label"]
    names = list(getattr(feature, "names", None) or [])
    classes = len(names) or int(max(train["label"] + test["label"])) + 1
    words = list(probe.label_words) or [f" {name}" for name in (names or range(classes))]
    if len(words) != classes:
        raise RetainError(
            f"{where}: {len(words)} label_words for {classes} classes; give one word per class, "
            "in label order"
        )
    return FewShotClassification(
        probe.label,
        train["text"],
        train["label"],
        test["text"],
        test["label"],
        words,
        k=probe.k,
        template=probe.template,
        max_length=probe.max_length,
        label_names=names or None,
    )
