"""Reading experiment YAML: numbers such as ``1e-4``, ``key=value`` overrides, one-line errors.

Overrides address nested settings with dots and list items by index (``training.lr=3e-4``,
``tasks.0.train=100``); a key that itself holds dots (a variant named ``l2sp-0.1``) is matched
whole when it exists; values are read as YAML (``1e-4`` is a number, ``null`` is None).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from retain.errors import RetainError

__all__ = ["DuplicateKeyError", "apply_overrides", "parse_value", "read_yaml", "yaml_load"]


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names the same key twice (YAML would silently keep the last)."""


class _Loader(yaml.SafeLoader):  # type: ignore[misc, unused-ignore]
    """``yaml.SafeLoader`` that also reads ``1e-4`` as a number (YAML 1.1 wants ``1.0e-4``) and
    refuses a mapping that names a key twice (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in lines:
                raise DuplicateKeyError(
                    f"key {key!r} appears twice in one mapping (lines {lines[key]} and {line}); "
                    "keep one"
                )
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML safely (no Python objects), reading ``1e-4`` as a float."""
    return yaml.load(text, Loader=_Loader)


def parse_value(text: str) -> Any:
    try:
        return yaml_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with each ``dotted.key=value`` applied (values parsed as YAML).

    >>> apply_overrides({"training": {"lr": 1e-4}, "tasks": [{"train": 10}]},
    ...                 ["training.lr=3e-4", "tasks.0.train=5"])
    {'training': {'lr': 0.0003}, 'tasks': [{'train': 5}]}
    """
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RetainError(f"override {item!r} is not key=value (e.g. training.lr=3e-4)")
        parts = key.strip().split(".")
        node: Any = data
        start = 0
        while True:
            end = _key_end(node, parts, start)
            part = ".".join(parts[start:end])
            where = ".".join(parts[:end])
            if end == len(parts):
                break
            node = _child(node, part, where, item)
            start = end
        value = parse_value(raw)
        if isinstance(node, list):
            node[_index(node, part, key, item)] = value
        elif isinstance(node, dict):
            node[part] = value
        else:
            raise RetainError(f"override {item!r}: {'.'.join(parts[:start])} is not a section")
    return data


def _key_end(node: Any, parts: list[str], start: int) -> int:
    """Where the key starting at ``parts[start]`` ends: the longest run of parts that, joined
    with dots, names an existing key of ``node`` (so ``sweep.variants.l2sp-0.1.0.alpha``
    reaches the variant ``l2sp-0.1``), else the single part."""
    if isinstance(node, dict):
        for end in range(len(parts), start + 1, -1):
            if ".".join(parts[start:end]) in node:
                return end
    return start + 1


def _index(node: list[Any], part: str, where: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RetainError(
            f"override {item!r}: {where} needs a list index 0..{len(node) - 1}, got {part!r}"
        )
    return int(part)


def _child(node: Any, part: str, where: str, item: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where, item)]
    if isinstance(node, dict):
        if node.get(part) is None:
            node[part] = {}
        return node[part]
    raise RetainError(f"override {item!r}: {where} is not a section")


def read_yaml(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path`` (one-line errors for a missing file or bad YAML)."""
    if not path.is_file():
        raise RetainError(
            f"config file {str(path)!r} does not exist; give a YAML file "
            "(shipped ones: `retain ls`)"
        )
    try:
        data = yaml_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RetainError(f"{path}: not a UTF-8 text file; give a YAML config") from None
    except OSError as error:
        raise RetainError(f"cannot read config file {str(path)!r} ({error.strerror})") from None
    except DuplicateKeyError as error:
        raise RetainError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise RetainError(f"{path}: not valid YAML{at}; fix the syntax") from None
    if not isinstance(data, dict):
        raise RetainError(f"{path}: must be a YAML mapping (name:, model:, tasks:, ...)")
    return data
