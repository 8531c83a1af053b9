"""The ``sweep`` section of an experiment config: the variants ``retain sweep`` compares, their
own settings, their seeds and the reference baselines run beside them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from retain.experiment.sections import Section, Seed

__all__ = ["SweepSection"]


class SweepSection(Section):
    """Variants compared by ``retain sweep``: a name and its strategies each (``naive: []``).

    ``settings``: per variant name, ``key=value`` overrides of the rest of the config for that
    variant only (``lora: ["training.lr=3e-3"]``: adapters usually want a larger learning rate);
    they also apply to the variants a ``--grid`` derives from it.
    ``seeds``: the seeds every variant runs with (default: the experiment's ``seeds``).
    ``references``: the reference baselines run beside the variants, ``joint`` (all tasks' data
    mixed, trained once: the upper bound of each task's score) and ``single`` (each task from
    the starting model alone: the new-task score without interference); the comparison shows
    every variant's average accuracy as a fraction of ``joint``'s
    (:mod:`retain.training.references`). The names ``joint`` and ``single`` are kept for them.
    """

    variants: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    settings: dict[str, list[str]] = Field(default_factory=dict)
    seeds: list[Seed] | None = None
    references: list[Literal["joint", "single"]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> SweepSection:
        taken = sorted({"joint", "single"} & set(self.variants))
        if taken:
            raise ValueError(
                f"variant name {taken[0]!r} is kept for the reference baseline; rename the "
                f"variant, or ask for the reference with references: [{taken[0]}]"
            )
        twice = sorted({r for r in self.references if self.references.count(r) > 1})
        if twice:
            raise ValueError(f"references lists {twice[0]!r} twice; list it once")
        return self
