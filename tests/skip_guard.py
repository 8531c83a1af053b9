"""CI fails on a skipped test unless the skip is on the commented allow-list.

A skip hides a claim that is never checked (a real-model test that cannot find its model, say).
With ``RETAIN_FORBID_SKIPS=1`` (set by ``.ci/run``), ``conftest.py`` collects every skipped
test and fails the session when one is not allowed by ``tests/skips_allowed.txt``: one
``fnmatch`` pattern of test ids a line, each with a ``# reason`` after it.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

ALLOW_LIST = Path(__file__).with_name("skips_allowed.txt")


def allowed_patterns(text: str) -> list[str]:
    """The patterns of an allow-list; a pattern without a ``# reason`` is a ValueError.

    >>> allowed_patterns("# header\\ntests/a.py::test_x  # needs a GPU\\n")
    ['tests/a.py::test_x']
    """
    patterns = []
    for number, line in enumerate(text.splitlines(), start=1):
        pattern, _, reason = line.partition("#")
        if not pattern.strip():
            continue
        if not reason.strip():
            raise ValueError(f"{ALLOW_LIST.name}:{number}: {pattern.strip()!r} needs a '# reason'")
        patterns.append(pattern.strip())
    return patterns


def unexpected_skips(skips: list[tuple[str, str]], patterns: list[str]) -> list[str]:
    """``"<test id>: <reason>"`` for each skip whose test id no pattern matches.

    >>> unexpected_skips([("t.py::a", "no GPU"), ("t.py::b", "x")], ["t.py::a"])
    ['t.py::b: x']
    """
    return [
        f"{test}: {reason}"
        for test, reason in skips
        if not any(fnmatch.fnmatchcase(test, p) for p in patterns)
    ]
