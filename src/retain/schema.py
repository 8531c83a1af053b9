"""The published JSON Schemas of retain's output files, and validation against them.

The JSON records retain writes name their format in a ``format`` key, and each format has a
JSON Schema (draft 2020-12) shipped in ``retain/schemas/``, versioned with the format (a
``retain.run/2`` would get ``run-2.json``):

* ``retain.run/1``: ``run-1.json``, the ``results.json`` of ``retain run`` (a run directory);
* ``retain.comparison/1``: ``comparison-1.json``, the ``comparison.json`` of ``retain sweep`` and
  ``retain report``;
* ``retain.audit/1``: ``audit-1.json``, the ``results.json`` of ``retain audit``;
* ``retain.diagnose/1``: ``diagnose-1.json``, the ``results.json`` of ``retain diagnose``.

An audit's ``results.json`` without a ``format`` key (``"kind": "audit"``) is read as
``retain.audit/1``. The schemas are precise about what a reader relies on (required keys, their
types, nullable sections: a section that was not measured is ``null``, and so is an undefined
number, since files are strict JSON with ``NaN`` written as ``null``) and open elsewhere: nested
records accept keys they do not name, so a new optional field does not break an old reader.

>>> record = {"format": "retain.run/1", "name": "demo", "variant": "naive", "seed": "0",
...           "model": "mlp", "score": {"name": "accuracy", "higher_is_better": True}}
>>> validate_record(record, source="results.json")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
retain.errors.RetainError: results.json: 'run' is a required property (format retain.run/1, ...
"""

from __future__ import annotations

import copy
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from retain.atomic_files import to_jsonable, write_json
from retain.errors import RetainError

__all__ = [
    "AUDIT_FORMAT",
    "SCHEMAS",
    "record_format",
    "schema_for",
    "validate_record",
    "validate_written_records",
    "write_record",
]

#: ``format`` of an audit's ``results.json`` (also assumed for an audit record without one).
AUDIT_FORMAT = "retain.audit/1"
#: Format string -> schema file in ``retain/schemas/``.
SCHEMAS: Mapping[str, str] = {
    AUDIT_FORMAT: "audit-1.json",
    "retain.comparison/1": "comparison-1.json",
    "retain.diagnose/1": "diagnose-1.json",
    "retain.run/1": "run-1.json",
}
#: The command that writes each format (named in the fix of an error).
_WRITER = {
    AUDIT_FORMAT: "retain audit",
    "retain.comparison/1": "retain report",
    "retain.diagnose/1": "retain diagnose",
    "retain.run/1": "retain run",
}
#: File names :func:`validate_written_records` looks at.
_RECORD_FILES = ("results.json", "comparison.json")
_SHOWN = 60  # characters of a value quoted in an error
_NAME = re.compile(r"[A-Za-z_]\w*")


def record_format(data: object) -> str | None:
    """The format a record declares: its ``format`` string, ``retain.audit/1`` for an audit
    record without one, else None.

    >>> record_format({"format": "retain.run/1"}), record_format({"kind": "audit"})
    ('retain.run/1', 'retain.audit/1')
    >>> record_format([]) is None
    True
    """
    if not isinstance(data, dict):
        return None
    found = data.get("format")
    if found is None and data.get("kind") == "audit":
        return AUDIT_FORMAT
    return found if isinstance(found, str) else None


@cache
def _schema_text(format: str) -> str:
    if format not in SCHEMAS:
        raise RetainError(f"no schema for format {format!r}; known: {', '.join(sorted(SCHEMAS))}")
    return (resources.files("retain") / "schemas" / SCHEMAS[format]).read_text(encoding="utf-8")


@cache
def _loaded(format: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(_schema_text(format))
    return schema


def schema_for(format: str) -> dict[str, Any]:
    """The JSON Schema of ``format`` (a copy; an unknown format is a RetainError).

    >>> schema_for("retain.run/1")["$id"]
    'https://retain.dev/schemas/run-1.json'
    """
    return copy.deepcopy(_loaded(format))


@cache
def _validator(format: str) -> Any:
    from jsonschema import Draft202012Validator  # imported when first needed

    return Draft202012Validator(_loaded(format))


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else [value]


def _where(path: Iterable[Any]) -> str:
    """A JSON path as ``run.matrix[0][1]``, a key that is not a plain name quoted
    (``drift.layers['model.layers.0']``); empty at the top level.

    >>> _where(["run", "matrix", 0, 1]), _where(["layers", "model.layers.0"])
    ('run.matrix[0][1]', "layers['model.layers.0']")
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _NAME.fullmatch(str(part)):
            out += f"[{str(part)!r}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(error: Any) -> str:
    """The error's message on one line, with a long offending value shortened; a value that
    matches none of a few types (a section that must be an object or null) says so."""
    context = list(error.context or [])
    if context and all(e.validator == "type" and not e.relative_path for e in context):
        types = ", ".join(repr(t) for e in context for t in _as_list(e.validator_value))
        return f"{_shown(error.instance)} is not of type {types}"
    text = str(error.message)
    whole = repr(error.instance)
    if len(whole) > _SHOWN and text.startswith(whole):
        text = _shown(error.instance) + text[len(whole) :]
    return " ".join(text.split())


def validate_record(data: object, *, source: str, expected: str | None = None) -> None:
    """Check ``data`` (a parsed JSON file, named ``source`` in errors) against its format's schema.

    The format is :func:`record_format` of ``data``; with ``expected``, it must be that one. A
    missing or unknown format, or a record that breaks its schema, is a one-line RetainError
    naming ``source``, the JSON path of the most relevant error and the format.
    """
    found = record_format(data)
    if found is None or found not in SCHEMAS:
        declared = data.get("format") if isinstance(data, dict) else None
        if not isinstance(data, dict):
            what = "not a JSON object"
        else:
            what = f"found {declared!r}" if "format" in data else "no 'format' key"
        raise RetainError(
            f"{source} has no known format ({what}; known: {', '.join(sorted(SCHEMAS))}); "
            "point at a file retain wrote"
        )
    if expected is not None and found != expected:
        raise RetainError(
            f"{source} is a {found} file, not {expected}; point at a file `{_WRITER[expected]}` "
            "wrote"
        )
    from jsonschema.exceptions import best_match

    errors = list(_validator(found).iter_errors(data))
    if not errors:
        return
    error = best_match(errors)
    where = _where(error.absolute_path)
    others = len(errors) - 1
    more = f", and {others} more error{'s' if others > 1 else ''}" if others else ""
    raise RetainError(
        f"{source}: {where + ': ' if where else ''}{_message(error)} (format {found}{more}); "
        f"re-create it with `{_WRITER[found]}`"
    )


def validate_written_records(root: Path) -> int:
    """Validate every ``results.json`` and ``comparison.json`` under ``root`` whose format is
    known; returns how many were validated.

    Files that are not JSON objects of a known format (a test's ``{}``, a broken file on
    purpose) are skipped; the first invalid one is a RetainError naming its path.
    """
    count = 0
    for path in sorted(Path(root).rglob("*.json")):
        if path.name not in _RECORD_FILES or not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if record_format(data) in SCHEMAS:
            validate_record(data, source=str(path))
            count += 1
    return count


def write_record(path: Path, data: Mapping[str, Any]) -> None:
    """Write the record ``data`` to ``path`` (strict JSON, atomically) after validating it
    against the schema of its format.

    A record that does not match is still written (hours of training are never thrown away for
    a schema slip) with a warning naming the mismatch; with ``RETAIN_STRICT_RECORDS=1`` (the
    test suite sets it) it is an error instead and nothing is written, so every record the tests
    produce is checked.
    """
    plain = to_jsonable(dict(data))
    try:
        validate_record(plain, source=path.name)
    except RetainError as error:
        if os.environ.get("RETAIN_STRICT_RECORDS") == "1":
            raise
        warnings.warn(f"{error}; written anyway: please report it", stacklevel=2)
    write_json(path, plain)
