"""Output folders that appear whole or not at all (``retain audit``, ``retain diagnose``).

Outputs are written into a hidden temporary sibling of the target and renamed into place at the
end, so an error (a bad input found late, a crash, Ctrl-C) never leaves a half-written folder.
The temporary folder gets retain's marker first (:mod:`retain.output_dirs`), and the target is
locked for the whole block. The atomic writers live in :mod:`retain.atomic_files`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retain.atomic_files import file_mode, to_jsonable, write_bytes, write_json, write_text
from retain.errors import RetainError
from retain.output_dirs import (
    OutputKind,
    check_output_parent,
    check_replaceable,
    output_kind,
    output_lock,
    write_marker,
)

__all__ = [
    "check_output_dir",
    "output_directory",
    "to_jsonable",
    "write_bytes",
    "write_json",
    "write_text",
]


def check_output_dir(out: Path, *, overwrite: bool, kind: OutputKind) -> None:
    """Fail early (before any work) if ``out`` cannot be written as a fresh output of ``kind``.

    ``overwrite`` replaces only an earlier output of the same ``kind`` that holds nothing but
    retain's own files (:func:`retain.output_dirs.check_replaceable`): any other non-empty
    folder is refused, never deleted. Links, files, the working directory and the folders above
    it are refused too (:func:`retain.output_dirs.check_output_parent`).
    """
    check_output_parent(out)
    if out.is_dir() and any(out.iterdir()):
        if output_kind(out) != kind:
            check_replaceable(out, kind)  # not retain's, or another kind: never replaced
        if not overwrite:
            raise RetainError(
                f"{str(out)!r} already exists and holds an earlier {kind} output; choose another "
                "--out or pass --overwrite to replace it"
            )
        check_replaceable(out, kind)


@contextmanager
def output_directory(out: Path, *, overwrite: bool = False, kind: OutputKind) -> Iterator[Path]:
    """Yield a temporary folder (marker written) that replaces ``out`` only if the block finishes.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> with output_directory(root / "run", kind="audit") as tmp:
    ...     _ = (tmp / "results.json").write_text("{}")
    >>> sorted(p.name for p in (root / "run").iterdir())
    ['.retain-output.json', 'results.json']
    """
    with output_lock(out):
        check_output_dir(out, overwrite=overwrite, kind=kind)
        parent = out.resolve().parent
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        tmp.chmod(file_mode(folder=True))  # mkdtemp makes 0700; an output is an ordinary folder
        try:
            write_marker(tmp, kind)
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old: Path | None = None
        if out.exists():
            old = parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
