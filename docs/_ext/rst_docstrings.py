"""Griffe extension for the API reference: reads retain's reST-flavoured docstrings as Markdown.

The docstrings are written for ``help()`` and doctest: ``Sphinx roles`` such as
:class:`~retain.Task`, literal blocks introduced by ``::`` and ``>>>`` examples. Markdown would
show the roles verbatim and turn ``>>>`` into nested block quotes, so before mkdocstrings renders
a docstring this extension rewrites, outside code:

* ``:class:`~a.b.C``` -> ```C``` and ``:func:`a.b.f``` -> ```a.b.f``` (inline code);
* ``text::`` followed by an indented block -> ``text:`` and a fenced code block;
* a run of ``>>>`` lines with their output -> a fenced ``pycon`` block.

It changes only what the documentation site shows; the source keeps its docstrings. Used from
``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj|const):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    if match.group(1):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def to_markdown(text: str) -> str:
    """``text`` (one docstring) with roles, literal blocks and doctests made Markdown."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(">>>"):
            # A doctest: every line up to the next blank one.
            pad = " " * _indent(line)
            out.append(f"{pad}```pycon")
            while i < len(lines) and lines[i].strip():
                out.append(pad + lines[i][len(pad) :])
                i += 1
            out.append(f"{pad}```")
            continue
        if stripped.endswith("::") and not stripped.endswith(":::"):
            # A literal block: the indented lines after a blank line.
            base = _indent(line)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > base:
                block_indent = _indent(lines[j])
                block: list[str] = []
                while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
                    block.append(lines[j][block_indent:] if lines[j].strip() else "")
                    j += 1
                while block and not block[-1]:
                    block.pop()
                head = _ROLE.sub(_role, line.rstrip()[:-1]).rstrip()
                if head.strip() and head.strip() != ":":
                    out.append(head)
                    out.append("")
                pad = " " * base
                language = "pycon" if any(b.lstrip().startswith(">>>") for b in block) else ""
                out.append(f"{pad}```{language}")
                out.extend(pad + b if b else "" for b in block)
                out.append(f"{pad}```")
                out.append("")
                i = j
                continue
        out.append(_ROLE.sub(_role, line))
        i += 1
    return "\n".join(out)


class RstDocstrings(Extension):
    """Rewrites each object's docstring with :func:`to_markdown` as griffe loads it."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
