"""The base of every experiment-config section: unknown keys refused, values frozen, and a
boolean never read as a number (``max_steps: true`` is a typo, not 1); and the seed type."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = ["Section", "Seed"]

#: A seed: what NumPy and torch accept, 0 .. 2**32 - 1.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class Section(BaseModel):
    """A section of an experiment config (:mod:`retain.experiment.config`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """``max_steps: true`` is a typo, never the number 1 (pydantic would read it so)."""
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if bool not in _types_of(annotation) and _types_of(annotation) & {int, float}:
                raise ValueError(f"expected a number, got {str(value).lower()}")
        return value


def _types_of(annotation: Any) -> set[Any]:
    """The plain types an annotation admits (``int | None`` -> {int, NoneType})."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _types_of(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_types_of(a) for a in typing.get_args(annotation)))
    return {annotation}
