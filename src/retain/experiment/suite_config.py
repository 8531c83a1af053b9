"""The ``suite`` section of an experiment config: a built-in capability suite, or probes listed
one by one (perplexity, linear/kNN probes, few-shot classification, generation quality,
lm-evaluation-harness tasks)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from retain.experiment.sections import Section

__all__ = ["ProbeSection", "SuiteSection"]


#: Settings that belong to one probe kind only (setting one for another kind is an error).
_KIND_ONLY = {
    "tasks": "lm_eval",
    "num_fewshot": "lm_eval",
    "limit": "lm_eval",
    "include": "lm_eval",
    "k": "few_shot",
    "template": "few_shot",
    "label_words": "few_shot",
    "prompt_words": "generation",
    "max_new_tokens": "generation",
}


class ProbeSection(Section):
    """One capability probe of a custom suite.

    Attributes:
        kind: ``perplexity`` (causal LMs: token perplexity of held-out text), ``linear`` or
            ``knn`` (encoders: a probe on frozen mean-pooled representations), ``few_shot``
            (causal LMs: in-context classification with ``k`` demonstrations), ``generation``
            (causal LMs: greedy continuations scored for repetition and fluency), ``lm_eval``
            (causal LMs: lm-evaluation-harness ``tasks``, one capability each).
        dataset: the dataset holding the text (and labels for ``linear``/``knn``/``few_shot``):
            a registry name or a local file; not for ``lm_eval``.
        name: the capability's name (default ``<dataset>`` for perplexity, else
            ``<dataset>_<kind>``).
        split: split to read for perplexity and generation, and the test split of the probes.
        n: rows used (a fixed seeded sample; ``linear``/``knn``/``few_shot`` use ``n`` train
            and ``n // 2`` test rows).
        max_length: tokens per perplexity window, or per few-shot prompt.
        text_column, label_column: a local file's columns (default ``text`` and ``label``).
        k: ``few_shot`` only: demonstrations per prompt, drawn seeded and class-balanced from
            the train split.
        template: ``few_shot`` only: each example's prompt, with ``{text}`` where the text goes;
            the label word follows it.
        label_words: ``few_shot`` only: the word scored for each class, in label order (default:
            the dataset's label names, each after a space).
        prompt_words: ``generation`` only: words of each text kept as the prompt.
        max_new_tokens: ``generation`` only: tokens generated per prompt.
        tasks: ``lm_eval`` only: lm-eval task names (its registry, or YAMLs in ``include``).
        num_fewshot: ``lm_eval`` only: in-context examples per document (None: the task's).
        limit: ``lm_eval`` only: documents per task (None: all).
        include: ``lm_eval`` only: folders of your own lm-eval task YAMLs.
    """

    kind: Literal["perplexity", "linear", "knn", "few_shot", "generation", "lm_eval"]
    dataset: str | None = None
    name: str | None = None
    split: str = "test"
    n: int = Field(default=64, ge=2)
    max_length: int = Field(default=512, ge=8)
    text_column: str | None = None
    label_column: str | None = None
    k: int = Field(default=4, ge=1)
    template: str = "{text}\nAnswer:"
    label_words: list[str] = Field(default_factory=list)
    prompt_words: int = Field(default=16, ge=1)
    max_new_tokens: int = Field(default=48, ge=2)
    tasks: list[str] = Field(default_factory=list)
    num_fewshot: int | None = Field(default=None, ge=0)
    limit: int | None = Field(default=None, ge=1)
    include: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _settings_fit_kind(self) -> ProbeSection:
        for key in sorted(self.model_fields_set):
            owner = _KIND_ONLY.get(key)
            default = type(self).model_fields[key].get_default(call_default_factory=True)
            # a dumped config (sweep.settings, a run's config.yaml) spells every default out
            if owner is not None and owner != self.kind and getattr(self, key) != default:
                raise ValueError(f"{key} is for kind: {owner}, not {self.kind}; drop it")
        if self.kind == "lm_eval":
            if not self.tasks:
                raise ValueError("an lm_eval probe needs tasks: [task, ...]")
            if self.dataset is not None:
                raise ValueError("an lm_eval probe reads its tasks' own data; drop dataset")
        elif self.dataset is None:
            raise ValueError(f"a {self.kind} probe needs a dataset")
        if "{text}" not in self.template:
            raise ValueError("template needs {text} where each example's text goes")
        return self

    @property
    def label(self) -> str:
        """The capability's name."""
        if self.name is not None:
            return self.name
        return str(self.dataset) if self.kind == "perplexity" else f"{self.dataset}_{self.kind}"


class SuiteSection(Section):
    """Capabilities scored before the sequence and after every task (and watched by monitors).

    Attributes:
        name: a built-in suite (``general`` for causal LMs, ``encoder``; see ``retain ls``), or
            None for the ``probes`` listed here.
        size: ``quick`` (small samples) or ``full`` (built-in suites only).
        probes: a custom suite (with ``name`` unset).
    """

    name: str | None = None
    size: Literal["quick", "full"] = "full"
    probes: list[ProbeSection] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_source(self) -> SuiteSection:
        if (self.name is None) == (not self.probes):
            raise ValueError("give either a built-in suite name or a list of probes, not both")
        return self
