"""Generate the JSON Schemas in ``retain/schemas/`` from the record types.

``python -m retain.records.schemas`` rewrites every shipped schema from its :class:`Record`
class; ``tests/records/test_schemas.py`` fails when a shipped file differs from what the types
generate, so the published schemas and the types never drift apart. The generated schema is
pydantic's (draft 2020-12) with ``$schema``, ``$id``, ``title`` and ``description`` set from the
record class; sections are open (``additionalProperties: true``) as the records are.
"""

from __future__ import annotations

import inspect
import json
from importlib import resources
from pathlib import Path
from typing import Any

from retain.atomic_files import write_text
from retain.records.base import Record
from retain.schema import SCHEMAS

__all__ = ["generate", "record_types", "schema_text"]


def record_types() -> dict[str, type[Record]]:
    """Format string -> record class, for every format in :data:`retain.schema.SCHEMAS`."""
    from retain.records.audit import AuditRecord
    from retain.records.comparison import ComparisonRecord
    from retain.records.diagnose import DiagnoseRecord
    from retain.records.run import RunRecord

    types: dict[str, type[Record]] = {
        cls.FORMAT: cls for cls in (RunRecord, ComparisonRecord, AuditRecord, DiagnoseRecord)
    }
    assert set(types) == set(SCHEMAS), "every schema needs a record type"
    return types


def generate(cls: type[Record]) -> dict[str, Any]:
    """The JSON Schema of ``cls``'s files."""
    body = cls.model_json_schema(mode="serialization")
    stem = SCHEMAS[cls.FORMAT].removesuffix(".json")
    doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].replace("\n", " ")
    head = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://retain.dev/schemas/{stem}.json",
        "title": f"{cls.FORMAT}: {doc}",
    }
    body.pop("title", None)
    body.pop("description", None)
    body["properties"]["format"] = {"const": cls.FORMAT}
    return {**head, **body}


def schema_text(cls: type[Record]) -> str:
    """:func:`generate` as the text of the shipped file (indented, sorted keys, newline)."""
    return json.dumps(generate(cls), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    """Rewrite the shipped schemas (run from a source checkout)."""
    folder = Path(str(resources.files("retain") / "schemas"))
    for format, cls in record_types().items():
        write_text(folder / SCHEMAS[format], schema_text(cls))
        print(f"wrote {folder / SCHEMAS[format]}")


if __name__ == "__main__":
    main()
