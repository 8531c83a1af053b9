"""What every typed record shares: JSON in and out, ``NaN`` as ``null``, formats and versions.

A record is a :class:`Record` (a pydantic model) whose ``format`` names the file it is, for
example ``retain.run/1``. :meth:`Record.to_json` gives the strict-JSON data written to disk
(undefined numbers, ``NaN`` in memory, are ``null``); :meth:`Record.from_json` reads it back,
checks the format, accepts the previous version of the format (:attr:`Record.PREVIOUS`, upgraded
by :meth:`Record.upgrade`) and turns any mismatch into one :class:`~retain.errors.RetainError`
line naming the file, the JSON path and the fix. Nested sections are :class:`Part` models; both
accept keys they do not name (kept on the object), so a file written by a newer retain with an
extra optional field still reads.

The JSON Schemas shipped in ``retain/schemas/`` are generated from these types
(:mod:`retain.records.schemas`), so a field renamed here is renamed in the schema too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
)
from typing_extensions import Self

from retain.errors import RetainError
from retain.schema import record_format, validate_record, write_record

__all__ = ["Num", "Part", "Record", "field_path"]


def _none_is_nan(value: object) -> object:
    return math.nan if value is None else value


def _nan_is_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


#: A float that may be undefined: ``NaN`` in memory, ``null`` on disk (infinities too).
Num = Annotated[
    float,
    BeforeValidator(_none_is_nan),
    PlainSerializer(_nan_is_none, return_type=float | None),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "null"}]}),
]


class Part(BaseModel):
    """A section of a record: typed fields, unknown keys kept, docstrings as descriptions."""

    model_config = ConfigDict(
        extra="allow",
        use_attribute_docstrings=True,
        populate_by_name=True,
        ser_json_inf_nan="null",
    )

    def to_json(self) -> dict[str, Any]:
        """Plain strict-JSON data (``NaN`` and infinities as ``None``)."""
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True)
        return data

    def to_dict(self) -> dict[str, Any]:
        """:meth:`to_json` (the name results had before they were typed)."""
        return self.to_json()


def field_path(location: tuple[int | str, ...]) -> str:
    """A pydantic error location as a JSON path: ``run.matrix[0][1]``.

    >>> field_path(("run", "matrix", 0, 1)), field_path(())
    ('run.matrix[0][1]', '')
    """
    out = ""
    for part in location:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).isidentifier():
            out += f".{part}" if out else str(part)
        else:
            out += f"[{str(part)!r}]"
    return out


class Record(Part):
    """A whole file: a :class:`Part` with a ``format`` string and a version history."""

    #: The format this class writes, e.g. ``retain.run/1``.
    FORMAT: ClassVar[str]
    #: Earlier formats it still reads (upgraded by :meth:`upgrade`).
    PREVIOUS: ClassVar[tuple[str, ...]] = ()
    #: The command that writes it (named in an error's fix).
    WRITER: ClassVar[str]

    format: str
    """The file's format and version, e.g. ``retain.run/1``."""

    @classmethod
    def upgrade(cls, data: dict[str, Any], found: str) -> dict[str, Any]:
        """``data`` of format ``found`` (this one or an earlier one in :attr:`PREVIOUS`) in the
        current form: earlier spellings of a field are rewritten here, before the schema check
        (default: unchanged but for the format string)."""
        return {**data, "format": cls.FORMAT}

    @classmethod
    def from_json(cls, data: object, *, source: str = "record") -> Self:
        """The record in ``data`` (parsed JSON, named ``source`` in errors).

        Data of this format or one in :attr:`PREVIOUS` is upgraded first; then it must be of
        :attr:`FORMAT` and match its schema (:func:`retain.schema.validate_record`, whose
        one-line errors name ``source``, the JSON path and the command that writes the file).
        """
        found = record_format(data)
        if isinstance(data, dict) and found is not None and found in (cls.FORMAT, *cls.PREVIOUS):
            data = cls.upgrade(data, found)
        validate_record(data, source=source, expected=cls.FORMAT)
        try:
            return cls.model_validate(data)
        except ValidationError as error:  # the schema let through what the type does not
            first = error.errors()[0]
            where = field_path(tuple(first["loc"]))
            raise RetainError(
                f"{source}: {where + ': ' if where else ''}{first['msg']} (format {cls.FORMAT}); "
                f"re-create it with `{cls.WRITER}`"
            ) from None

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read the record in the JSON file ``path`` (errors name the path)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RetainError(
                f"{str(path)!r} does not exist; point at a file `{cls.WRITER}` wrote"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RetainError(f"{str(path)!r} is not readable JSON ({error})") from None
        return cls.from_json(data, source=str(path))

    def write(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path`` atomically, checked against the format's schema
        (:func:`retain.schema.write_record`)."""
        write_record(Path(path), self.to_json())
